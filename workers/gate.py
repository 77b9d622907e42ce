"""A test-only hook that makes kill points deterministic.

With VPGRID_TEST_GATE=DIR set, a worker publishes a finished run only after claiming a token: it renames one
`token-*` file of DIR (an atomic claim: two workers never take the same one), or finds DIR/open. A test
releases N tokens and waits for N rows, and knows no further run can be published, however fast the machine
is, until it releases more. Unset (always, outside tests), it costs one environment look-up.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "VPGRID_TEST_GATE"


def wait_for_token(poll_s: float = 0.05) -> None:
    gate = os.environ.get(ENV)
    if not gate:
        return
    d = Path(gate)
    waiting = d / f"waiting-{os.getpid()}"  # tells a test which process holds an unpublished run
    try:
        while not (d / "open").exists():
            for token in sorted(d.glob("token-*")):
                try:
                    token.rename(d / f"used-{token.name}-{os.getpid()}")
                    return
                except FileNotFoundError:  # another worker claimed it first
                    continue
            waiting.touch()
            time.sleep(poll_s)
    finally:
        waiting.unlink(missing_ok=True)
