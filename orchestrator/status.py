"""Progress of a store against the grid saved in it: done / failed / pending, per axis, running, ETA."""
from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

from orchestrator.grid import expand, parse_grid
from orchestrator.plan import breakdown_by_state
from orchestrator.store import Store


@dataclass
class StatusReport:
    store: str
    grid: str
    total: int
    done: int
    failed: int
    pending: int
    by_axis: dict = field(default_factory=dict)  # axis -> value -> {done, failed, pending}
    running: list = field(default_factory=list)  # heartbeats of trials running now
    driver_alive: bool = False
    runs_per_minute: Optional[float] = None
    eta_seconds: Optional[float] = None
    not_in_grid: int = 0  # rows of runs the current grid no longer has

    def to_dict(self) -> dict:
        return asdict(self)


def _alive(info: dict) -> bool:
    if not info or "finished" in info:
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot check another host's process; trust the heartbeats
    try:
        os.kill(int(info["pid"]), 0)
        return True
    except (ProcessLookupError, PermissionError, ValueError):
        return False


def status(store: Store) -> StatusReport:
    grid = parse_grid(store.grid_text(), str(store.meta_dir / "grid.yaml"))
    runs = expand(grid)
    states = store.statuses()
    keys = [r.run_key for r in runs]
    names = {"ok": "done", "failed": "failed"}
    run_states = [names.get(states.get(k), "pending") for k in keys]
    counts = Counter(run_states)
    rep = StatusReport(str(store.root), grid.name, len(runs), counts["done"], counts["failed"], counts["pending"])
    rep.by_axis = breakdown_by_state(runs, run_states)
    rep.not_in_grid = len(states.keys() - set(keys))
    info = store.launch_info()
    rep.driver_alive = _alive(info)
    if rep.driver_alive:
        rep.running = store.heartbeats()
        started = info.get("started", time.time())
        recent = [t for t in store.finished_times() if t >= started]
        elapsed = time.time() - started
        if recent and elapsed > 0:
            rep.runs_per_minute = 60 * len(recent) / elapsed
            rep.eta_seconds = rep.pending / (len(recent) / elapsed)
    return rep
