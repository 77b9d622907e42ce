"""Progress of a store against the grid saved in it: done / failed / pending, per axis, running, ETA."""
from __future__ import annotations

import os
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

from orchestrator.grid import expand, parse_grid
from orchestrator.jobs import job_state
from orchestrator.plan import breakdown_by_state
from workers.core.store import Store


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
    job: Optional[dict] = None  # a submitted Ray Job whose driver has not started, or that failed (orchestrator.jobs)
    rehearsal: Optional[dict] = None  # {speedup, throughput}: the store holds a rehearsal, its done runs rehearsed

    def to_dict(self) -> dict:
        return asdict(self)


DRIVER_STALE_S = 60.0  # the driver rewrites launch.json every HEARTBEAT_S; six missed beats mean it is gone
TRIAL_STALE_S = 60.0  # a running trial rewrites its heartbeat every HEARTBEAT_S too; a dead node's trial stops


def running_trials(heartbeats: list[dict], now: Optional[float] = None) -> list[dict]:
    """The heartbeats of trials that are running: fresh ones. A trial whose node died leaves its file behind until
    Tune retries it (which rewrites it) or the next launch clears it; it is not running meanwhile."""
    now = now or time.time()
    return [h for h in heartbeats if now - float(h.get("updated", 0)) <= TRIAL_STALE_S]


def driver_alive(info: dict, now: Optional[float] = None) -> bool:
    """A launch is running while its driver's heartbeat in the store is fresh. The store is all a reader on
    another host can see; on the driver's own host a dead pid says it sooner."""
    if not info or "finished" in info:
        return False
    beat = info.get("heartbeat", info.get("started"))
    if beat is None or (now or time.time()) - float(beat) > DRIVER_STALE_S:
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except (ProcessLookupError, ValueError, KeyError):
            return False
        except PermissionError:
            pass  # another user's live process
    return True


def status(store: Store) -> StatusReport:
    # Every read of the store at once: on an object store each is a round trip or a listing, and a status taken
    # while a launch publishes must stay quick (docs/scale.md). The grid's error (not a store, no bucket) wins.
    with ThreadPoolExecutor(6) as pool:
        reads = {name: pool.submit(getattr(store, name)) for name in
                 ("grid_text", "scan", "rehearsal", "launch_info", "submitted_info", "heartbeats")}
        text = reads["grid_text"].result()
        scanned, info = reads["scan"].result(), reads["launch_info"].result()
        grid = parse_grid(text, f"{store.root}/_vpgrid/grid.yaml")
        runs = expand(grid)
        states = {k: s for k, (s, _) in scanned.items()}
        keys = [r.run_key for r in runs]
        names = {"ok": "done", "rehearsed": "done", "failed": "failed"}
        run_states = [names.get(states.get(k), "pending") for k in keys]
        counts = Counter(run_states)
        rep = StatusReport(str(store.root), grid.name, len(runs), counts["done"], counts["failed"], counts["pending"])
        rep.by_axis = breakdown_by_state(runs, run_states)
        rep.not_in_grid = len(states.keys() - set(keys))
        rep.rehearsal = reads["rehearsal"].result()
        rep.driver_alive = driver_alive(info)
        rep.job = job_state(reads["submitted_info"].result(), info, rep.driver_alive)
        if rep.driver_alive:
            rep.running = running_trials(reads["heartbeats"].result())
            started = info.get("started", time.time())
            recent = [t for _, t in scanned.values() if t is not None and t >= started]
            elapsed = time.time() - started
            if recent and elapsed > 0:
                rep.runs_per_minute = 60 * len(recent) / elapsed
                rep.eta_seconds = rep.pending / (len(recent) / elapsed)
    return rep
