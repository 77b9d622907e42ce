"""Launch a grid on Ray Tune: validate, plan, skip what the store has, run the rest.

The store decides what is done; Ray Tune's experiment state is never read back. Resume is a launch of
the grid saved in the store. The driver runs where the cluster is (a local Ray, or the head node of a
cluster, often as a Ray Job from `vpgrid submit`); it only needs to reach the store.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from workers.core.errors import Interrupted, LaunchError
from orchestrator.grid import Grid, GridError, expand
from orchestrator.plan import Trial, pack
from orchestrator.ray_tune import Executed, Trials, make_callback, run_on_tune
from orchestrator.validate import check_grid, check_runs
from workers.core.store import HEARTBEAT_S, Store
from workers.core.spec import RunSpec

# Merge one-row files during a long launch, so status and resume read a few files, not thousands, on NFS or
# S3: every so often once there are enough, and at once when so many wait that listing them gets slow.
COMPACT_EVERY_S = float(os.environ.get("VPGRID_COMPACT_EVERY_S", 300))
COMPACT_MIN_FILES = int(os.environ.get("VPGRID_COMPACT_MIN_FILES", 200))
COMPACT_MAX_FILES = int(os.environ.get("VPGRID_COMPACT_MAX_FILES", 2000))


def compaction_due(files: int, since_last_s: float, every_s: float = COMPACT_EVERY_S,
                   min_files: int = COMPACT_MIN_FILES, max_files: int = COMPACT_MAX_FILES) -> bool:
    """Whether the housekeeper merges now, given the one-row files waiting and the seconds since its last merge.
    The count bound keeps the store's object count (and every listing) bounded however fast runs publish."""
    return files >= max_files or (files >= min_files and since_last_s > every_s)


@dataclass
class LaunchSummary:
    store: str
    total: int
    skipped: int
    launched: int
    ok: int = 0
    failed: int = 0
    trials: int = 0
    seconds: float = 0.0
    errored_trials: int = 0
    pending: int = 0  # launched runs with no row at the end: their trial ran out of retries, or Ctrl-C
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT): what is pending was never given its chance
    trial_errors: list = field(default_factory=list)  # first line of each errored trial's error
    rehearsal: Optional["Rehearsal"] = None
    missing: dict = field(default_factory=dict)  # rehearsal: an input's error -> the hosts it failed on
    predicted_s: Optional[float] = None  # rehearsal: the schedule's wall time on the cluster's GPUs (unscaled)
    tune_s: float = 0.0  # rehearsal: wall time of the trials (Tune's fit), to compare x speedup with predicted_s
    gpus: float = 0.0  # GPUs the cluster declared


@dataclass(frozen=True)
class Rehearsal:
    """`--rehearse`: every run checks its inputs on its node and sleeps its estimated seconds / speedup."""

    speedup: float = 1.0
    throughput: Optional[str] = None  # the table the sleeps come from; None: the shipped one

    def table(self):
        from orchestrator.estimate import DEFAULT_TABLE, load_table

        return load_table(self.throughput or DEFAULT_TABLE)


def pending(runs: list[RunSpec], statuses: dict[str, str], retry_failed: bool) -> list[RunSpec]:
    return [r for r in runs if statuses.get(r.run_key) != "ok" and (retry_failed or r.run_key not in statuses)]


def check_address(address: Optional[str]) -> None:
    """Refuse what cannot work before anything is written: Ray Client, and a HOST:PORT nobody answers at."""
    if address and address.startswith("ray://"):
        raise LaunchError(
            f"--address {address}: Ray Client (ray://) cannot drive a launch: Tune would run its controller on "
            "the head node, away from this process. Submit a Ray Job instead (vpgrid submit GRID --address "
            "http://HEAD:8265 --store URI), or run vpgrid launch on the head node (--address auto)")
    if address and address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:  # ray.init would retry for minutes
            raise LaunchError(f"--address {address}: no Ray head answers there ({e}); give the head's HOST:PORT "
                              "(`ray start --head` prints it), 'auto' on a cluster node, or nothing for a local Ray") from None


def launch(grid: Grid, grid_text: str, source: str, store_uri, *, address: Optional[str] = None,
           num_cpus: Optional[float] = None, num_gpus: Optional[float] = None, retry_failed: bool = False,
           cache_dir: Optional[Path] = None, data_root: Optional[str] = None, progress: bool = True,
           max_failures: Optional[int] = None, callbacks: tuple[str, ...] = (),
           rehearse: Optional[Rehearsal] = None,
           executor: Callable[[Trials], Executed] = run_on_tune) -> LaunchSummary:
    """Run what the store lacks of the grid. `executor` runs the trials (Ray Tune; tests run them in-process);
    whatever it says, the store decides what this launch achieved."""
    t_start = time.time()
    check_address(address or os.environ.get("RAY_ADDRESS"))
    check_grid(grid, source)  # names and args against the cards, torch-free, as `vpgrid plan` does
    runs = expand(grid, source)  # refuses a grid whose rules leave no run
    defaults = check_runs(runs, source)  # before the store exists: a bad grid leaves nothing behind
    extra = [make_callback(c) for c in dict.fromkeys(callbacks + tuple(grid.callbacks))]  # a bad name, too
    table = _rehearsal_table(rehearse, runs)
    store = Store(store_uri)
    store.create(grid_text, rehearsal=rehearse and {"speedup": rehearse.speedup, "throughput": rehearse.throughput})
    todo = pending(runs, store.statuses(), retry_failed)
    trials = pack(grid, todo, defaults)
    data_root = data_root or os.environ.get("VPGRID_DATA") or grid.data_root
    data_root = str(Path(data_root).expanduser().resolve()) if data_root else None
    summary = LaunchSummary(store.root, len(runs), len(runs) - len(todo), len(todo), trials=len(trials),
                            rehearsal=rehearse)
    if not trials:
        return summary
    store.clear_heartbeats()  # a killed earlier launch leaves stale ones
    launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    info = {"launch_id": launch_id, "pid": os.getpid(), "host": socket.gethostname(), "started": t_start,
            "heartbeat": time.time(), "runs": len(todo), "trials": len(trials)}
    if os.environ.get("VPGRID_JOB_ID"):  # a Ray Job from `vpgrid submit`, which waits for this heartbeat
        info["job_id"] = os.environ["VPGRID_JOB_ID"]
    store.write_launch(info)
    if "job_id" in info:
        from orchestrator.jobs import DRIVER_STARTED

        print(f"{DRIVER_STARTED}: job {info['job_id']}, {len(todo)} runs in {len(trials)} trials, store {store.root}",
              file=sys.stderr, flush=True)
    # Tune keeps each trial's config in its state and copies it per trial: configs stay small, and each
    # trial's runs travel once, through the store (`_vpgrid/packs/<trial>.json`, read by its trial).
    configs = [{"trial_id": t.trial_id, "cpu": t.cpu, "gpu": t.gpu, "runs": len(t.runs),
                "store": store.root, "cache": str(Path(cache_dir).resolve()) if cache_dir else None,
                "data_root": data_root, "retry_failed": retry_failed,
                "rehearse": rehearse.speedup if rehearse else None,
                # --num-gpus on a local Ray declares logical GPUs (tests, CPU machines): no CUDA is expected
                "logical_gpus": num_gpus is not None and not (address or os.environ.get("RAY_ADDRESS"))}
               for t in trials]
    store.put_packs({t.trial_id: _pack_payload(t, table) for t in trials})
    keeper = _Housekeeper(store, info)
    keeper.start()
    try:
        done = executor(Trials(configs, launch_id, store, address, num_cpus, num_gpus, progress,
                               max_failures if max_failures is not None else grid.max_failures, extra))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over SIGINT: leave now, no compaction
        keeper.stop()
        store.write_launch({**info, "heartbeat": time.time(), "finished": time.time(), "ended": "interrupted"})
        raise Interrupted(f"interrupted (Ctrl-C); finished runs are in the store: vpgrid resume {store.root}") from None
    except LaunchError as e:
        keeper.stop()
        store.write_launch({**info, "heartbeat": time.time(), "finished": time.time(), "ended": str(e)})
        raise
    finally:
        keeper.stop()
    summary.gpus, summary.tune_s, summary.interrupted = done.gpus, done.seconds, done.interrupted
    summary.errored_trials, summary.trial_errors = len(done.errors), done.errors
    store.compact()
    have = store.statuses()  # the store, not Tune's callbacks, says what this launch achieved
    summary.ok = sum(1 for r in todo if have.get(r.run_key) == "ok")
    summary.failed = sum(1 for r in todo if have.get(r.run_key) == "failed")
    summary.pending = summary.launched - summary.ok - summary.failed
    if rehearse:
        summary.ok = sum(1 for r in todo if have.get(r.run_key) == "rehearsed")
        summary.pending = summary.launched - summary.ok - summary.failed
        summary.missing = _missing_inputs(store)
        summary.predicted_s = _predicted(trials, table, summary.gpus)
    store.write_launch({**info, "heartbeat": time.time(), "finished": time.time(),
                        **({"ended": "interrupted"} if summary.interrupted else {})})
    summary.seconds = time.time() - t_start
    return summary


def _rehearsal_table(rehearse: Optional[Rehearsal], runs: list[RunSpec]):
    """The throughput table a rehearsal sleeps by, checked against every run before anything is written."""
    if rehearse is None:
        return None
    from orchestrator.estimate import TableError, run_seconds

    try:
        table = rehearse.table()
        for r in runs:
            run_seconds(r, table)
    except TableError as e:
        raise LaunchError(f"--rehearse: {e}") from None
    return table


def _pack_payload(trial: Trial, table) -> bytes:
    """What one trial's worker needs beyond its config: its runs, and in a rehearsal the seconds to sleep."""
    import json

    out = {"runs": [r.to_dict() for r in trial.runs]}
    if table is not None:
        from orchestrator.estimate import trial_seconds

        out["startup_s"], out["seconds"] = trial_seconds(trial, table)
    return json.dumps(out).encode()


def _predicted(trials: list[Trial], table, gpus: float) -> Optional[float]:
    """The schedule's wall time for these trials on the cluster's GPUs, as `plan --estimate --gpus` predicts."""
    from orchestrator.estimate import TableError, schedule, trial_seconds

    if not trials or gpus < 1:
        return None
    try:
        return schedule(trials, [sum(b) + a for a, b in (trial_seconds(t, table) for t in trials)], int(gpus)).wall_s
    except TableError:  # trials asking no GPU: no GPU schedule to predict
        return None


def _missing_inputs(store: Store) -> dict[str, list[str]]:
    """A rehearsal's failed rows grouped by error (its first line, without where) -> the nodes it failed on."""
    import re

    t = store.table().select(["status", "error"])
    out: dict[str, set] = {}
    for status, error in zip(*(t.column(c).to_pylist() for c in ("status", "error"))):
        if status == "failed" and error:
            m = re.fullmatch(r"(.*) \(on (.+)\)", error.splitlines()[0])
            line, where = m.groups() if m else (error.splitlines()[0], "?")
            out.setdefault(line, set()).add(where)
    return {k: sorted(v) for k, v in out.items()}


class _Housekeeper(threading.Thread):
    """The driver's heartbeat in the store (so `status` anywhere can tell a live launch from a dead one) and
    periodic compaction (so status and resume read a few files, not thousands)."""

    def __init__(self, store: Store, info: dict) -> None:
        super().__init__(daemon=True, name="vpgrid-housekeeper")
        self.store, self.info = store, info
        self._stop_event = threading.Event()
        self._last_compact = time.time()

    def run(self) -> None:
        while not self._stop_event.wait(min(HEARTBEAT_S, COMPACT_EVERY_S)):
            try:
                self.store.write_launch({**self.info, "heartbeat": time.time()})
                waiting = sum(1 for i in self.store._files() if not i.base_name.startswith("part-"))
                if compaction_due(waiting, time.time() - self._last_compact):
                    self.store.compact()
                    self._last_compact = time.time()
            except Exception as e:  # the store being briefly unreachable must not end the launch
                print(f"warning: store housekeeping failed: {str(e).splitlines()[0]}", file=sys.stderr)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
