"""What the benchmarks share: the paper grid, the best of repeated timings, a command's wall time, an S3 server."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

PAPER = Path(__file__).resolve().parent.parent / "grids" / "paper.yaml"


def best(fn, repeats: int, check=None) -> float:
    """The fastest of `repeats` calls, in seconds: on shared cores the minimum is the least noisy estimate.
    `check(result)` runs on each call's result, outside the timing."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if check is not None:
            check(out)
    return min(times)


def cli_seconds(args: list[str], repeats: int) -> float:
    """Wall time of `vpgrid ARGS` in a fresh interpreter, so imports count as a user sees them."""
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    cwd = PAPER.parent.parent

    def once():
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return best(once, repeats)


@contextlib.contextmanager
def moto_s3(bucket: str, log: Optional[Path] = None):
    """A real S3 API server (moto's server mode, installed with the test extra) on the loopback with `bucket` in
    it, and the standard AWS variables pointing this process (and what it starts) at it; yields its port. `log`:
    where the server's access log goes (one line a request)."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb") if log else subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket=bucket)
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        yield port
    finally:
        server.kill()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
