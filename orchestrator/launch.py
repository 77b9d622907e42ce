"""Launch a grid on Ray Tune: validate, plan, skip what the store has, run the rest.

The store decides what is done; Ray Tune's experiment state is never read back. Resume is a launch of
the grid saved in the store. The driver runs where the cluster is (a local Ray, or the head node of a
cluster, often as a Ray Job from `vpgrid submit`); it only needs to reach the store.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from workers.core.errors import ClusterGone, Interrupted, LaunchError
from orchestrator.grid import Grid, GridError, expand
from orchestrator.plan import Trial, pack
from workers.core.store import HEARTBEAT_S
from orchestrator.validate import check_grid
from workers.core.store import Store
from workers.core.spec import RunSpec

# Merge one-row files during a long launch (every so often, once there are enough), so status and resume
# read a few files, not thousands, on NFS or S3.
COMPACT_EVERY_S = float(os.environ.get("VPGRID_COMPACT_EVERY_S", 300))
COMPACT_MIN_FILES = int(os.environ.get("VPGRID_COMPACT_MIN_FILES", 200))
CLUSTER_GONE_S = float(os.environ.get("VPGRID_CLUSTER_GONE_S", 60))  # no resources this long: give up


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


def check_names(runs: list[RunSpec], source: str) -> dict[str, dict]:
    """Every model, compression, dataset and method must be registered. Imports the workers (torch).

    Returns the models' registered default resources."""
    from workers import catalog

    problems = catalog.check(runs)
    if problems:
        raise GridError(f"{source}: " + "; ".join(problems))
    return catalog.default_resources({r.model for r in runs})


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
           rehearse: Optional[Rehearsal] = None) -> LaunchSummary:
    t_start = time.time()
    check_address(address or os.environ.get("RAY_ADDRESS"))
    check_grid(grid, source)  # names and args against the schemas, torch-free, as `vpgrid plan` does
    runs = expand(grid, source)  # refuses a grid whose rules leave no run
    defaults = check_names(runs, source)  # before the store exists: a bad grid leaves nothing behind
    extra = [_callback(c) for c in dict.fromkeys(callbacks + tuple(grid.callbacks))]  # a bad name, too
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
        errors, summary.gpus, summary.tune_s, summary.interrupted = _run_tune(
            configs, launch_id, store, address, num_cpus, num_gpus, progress,
            max_failures if max_failures is not None else grid.max_failures, extra)
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
    summary.errored_trials, summary.trial_errors = len(errors), errors
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
                if time.time() - self._last_compact > COMPACT_EVERY_S:
                    self._last_compact = time.time()
                    if sum(1 for i in self.store._files() if not i.base_name.startswith("part-")) >= COMPACT_MIN_FILES:
                        self.store.compact()
            except Exception as e:  # the store being briefly unreachable must not end the launch
                import sys

                print(f"warning: store housekeeping failed: {str(e).splitlines()[0]}", file=sys.stderr)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def _connect(address: Optional[str], num_cpus, num_gpus, runtime_env: dict) -> None:
    """Start or join Ray, ending any failure in one line. A local start is tried twice: an agent dying at
    start-up happens and is transient."""
    import ray

    tries = 1 if address else 2
    for attempt in range(1, tries + 1):
        try:
            if address:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            else:
                # "local": a private Ray, even when `ray start` left a cluster running on this machine
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                         runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
            if os.environ.get("VPGRID_DEBUG") != "1":
                _shorten_raylet_errors()
            return
        except Exception as e:  # ConnectionError, RuntimeError, TimeoutError, ValueError: all end the same way
            ray.shutdown()
            if attempt == tries:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise LaunchError(f"could not start or reach {where}: {first}"
                                  + ("" if address else "; run the command again")) from None


def _shorten_raylet_errors() -> None:
    """Ray's driver prints every error the raylets publish, whatever log_to_driver says, and on stdout: a node's
    death comes as a 20-line state dump, often twice. vpgrid says one line per lost trial (RunProgress); of Ray's
    messages keep the first line of each distinct one, once, on stderr (stdout carries data only)."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)  # the listener thread looks it up at each message
    if original is None or getattr(original, "vpgrid", False):
        return
    seen: set[str] = set()

    def first_lines_once(data, *args, **kwargs):
        if data.get("pid") != "raylet":
            return original(data, *args, **kwargs)
        lines = [first for m in data.get("lines", []) if (first := (str(m).strip().splitlines() or [""])[0])]
        lines = [line for line in dict.fromkeys(lines) if line not in seen]
        seen.update(lines)
        if lines:
            original({**data, "lines": lines, "is_err": True}, *args, **kwargs)

    first_lines_once.vpgrid = True
    ray_worker.print_to_stdstream = first_lines_once


class _ClusterWatch:
    """A Tune callback's worth of checks: the driver's own node alive, and some CPUs somewhere. Without it
    Tune loops forever on "Cluster resources not detected or are 0" once the driver's raylet is gone.

    It also notes a Ctrl-C: Tune takes SIGINT to stop gracefully, and its results alone cannot tell an interrupted
    launch from one whose trials ran out of retries."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._last = 0.0
        self._zero_since: Optional[float] = None
        self.interrupted = False
        self._hooked = False

    def _note_sigint(self) -> None:
        """Wrap the SIGINT handler Tune installed for its loop (this runs inside the loop, in the main thread)."""
        self._hooked = True
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(sig, frame):
            self.interrupted = True
            if callable(tune_handler):
                tune_handler(sig, frame)  # Tune stops its loop and puts back the handler it found
            elif tune_handler != signal.SIG_IGN:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)

    def check(self) -> None:
        import ray

        if not self._hooked:
            self._note_sigint()
        now = time.time()
        if now - self._last < 2.0:
            return
        self._last = now
        me = ray.get_runtime_context().get_node_id()
        if not any(n["NodeID"] == me and n["Alive"] for n in ray.nodes()):
            raise ClusterGone(self._gone("this driver's Ray node died"))
        if not ray.cluster_resources().get("CPU"):
            self._zero_since = self._zero_since or now
            if now - self._zero_since > CLUSTER_GONE_S:
                raise ClusterGone(self._gone(f"the cluster has had no CPUs for {CLUSTER_GONE_S:.0f} s"))
        else:
            self._zero_since = None

    def _gone(self, why: str) -> str:
        return f"the Ray cluster is gone ({why}); finished runs are in the store: vpgrid resume {self.store.root}"


def _callback(name: str):
    """A Tune logger callback by short name, or any `package.module:Class` taking no arguments."""
    from importlib import import_module

    known = {"csv": "ray.tune.logger:CSVLoggerCallback", "json": "ray.tune.logger:JsonLoggerCallback",
             "tensorboard": "ray.tune.logger:TBXLoggerCallback",
             "wandb": "ray.air.integrations.wandb:WandbLoggerCallback",
             "mlflow": "ray.air.integrations.mlflow:MLflowLoggerCallback"}
    target = known.get(name, name)
    if ":" not in target:
        raise GridError(f"callback {name!r}: use one of {', '.join(known)} or package.module:Class")
    module, attr = target.split(":", 1)
    try:
        return getattr(import_module(module), attr)()
    except (ImportError, AttributeError, TypeError) as e:
        raise GridError(f"callback {name!r}: cannot create {target}: {e}") from None


def _packs_searcher(configs: list[dict]):
    """A Tune searcher that hands out the trials' configs in launch order, then says it is finished.

    Instead of `tune.grid_search(configs)`: its variant generation deep-copies the whole space for every trial
    (quadratic: ~300 s before the first of the paper grid's 826 trials started, again on every resume)."""
    from ray.tune.search import Searcher

    class Packs(Searcher):
        def __init__(self) -> None:
            super().__init__()
            self._todo = iter(configs)

        def suggest(self, trial_id: str):
            nxt = next(self._todo, None)
            return Searcher.FINISHED if nxt is None else {"pack": nxt}

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            pass  # Tune's state is never read back: the store says what is done

        def restore(self, checkpoint_path: str) -> None:
            pass

    return Packs()


def _run_tune(configs: list[dict], launch_id: str, store: Store, address, num_cpus,
              num_gpus, progress: bool, max_failures: int, extra: list) -> tuple[list[str], float, float, bool]:
    """Runs the trials; returns the last line of each errored trial's error, the cluster's GPUs, the seconds the
    trials took, and whether Ctrl-C stopped them."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files; never wait on the hub
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output ignores verbose=0 and uses stdout
    from ray import tune

    from orchestrator.progress import RunProgress
    from workers.ray_adapter import trainable

    _connect(address, num_cpus, num_gpus, _runtime_env())
    import ray

    if os.environ.get("VPGRID_DEBUG") != "1":  # trial tracebacks stay in Tune's error.txt files; we print a line each
        import logging

        for name in ("ray.tune", "ray.air", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        # Tune lets a custom searcher have one pending trial at a time (trials would start one by one); allow
        # what it allows grid_search: at least 200, else 1.1 per CPU.
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG",
                              str(max(200, int(1.1 * ray.cluster_resources().get("CPU", 1.0)))))
        total_runs = sum(c["runs"] for c in configs)
        watch = _ClusterWatch(store)
        bar = RunProgress(total_runs, watch, enabled=progress, max_failures=max_failures,
                          node_of=lambda trial: _node_of(store, trial))
        resources = tune.with_resources(trainable, lambda cfg: {"cpu": cfg["pack"]["cpu"], "gpu": cfg["pack"]["gpu"]})
        storage = f"{store.meta_dir}/tune" if store.local else str(_tune_dir())
        tuner = tune.Tuner(
            resources,
            tune_config=tune.TuneConfig(
                search_alg=_packs_searcher(configs), num_samples=len(configs),
                reuse_actors=True,
                trial_name_creator=lambda t: t.config["pack"]["trial_id"],
                trial_dirname_creator=lambda t: t.config["pack"]["trial_id"]),
            run_config=tune.RunConfig(
                name=launch_id, storage_path=storage, verbose=0, callbacks=[bar, *extra],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
        )
        before = signal.getsignal(signal.SIGINT)
        t0 = time.time()
        try:
            with bar:
                grid = tuner.fit()
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, before)  # Tune leaves its handler behind; the next launch in this process
        seconds = time.time() - t0
        errors = [(str(r.error).strip().splitlines() or ["error"])[-1][:300] for r in grid if r.error is not None]
        return errors, gpus, seconds, watch.interrupted
    finally:
        ray.shutdown()


def _node_of(store: Store, trial: str) -> tuple[Optional[str], Optional[bool]]:
    """The node a trial's heartbeat names (the trial may be gone with it: the store still says where it ran), and
    whether Ray still has that node alive (None: not known)."""
    try:
        node = (store._get_json(f"{store.meta_dir}/running/{trial}.json") or {}).get("node")
    except OSError:
        return None, None
    if not node:
        return None, None
    import ray

    try:
        return node, any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())
    except Exception:  # the GCS unreachable for a moment: say what is known
        return node, None


def _tune_dir() -> Path:
    """Tune's own files (a convenience, never read back) stay on the driver's disk when the store is remote."""
    return Path(os.environ.get("VPGRID_CACHE") or Path.home() / ".cache" / "vpgrid") / "tune"


def _runtime_env() -> dict:
    """Ship this tree's code to every worker, whatever is installed on the nodes. Inside a Ray Job the job's
    runtime_env (set by `vpgrid submit`) already ships it."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return {}  # Ray refuses a driver runtime_env that repeats any key of the job's
    env = {"env_vars": {"HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]}}
    root = Path(__file__).resolve().parents[1]
    return {**env, "py_modules": [str(root / "orchestrator"), str(root / "workers")]}
