"""A launch's trials on Ray Tune: join or start Ray, feed Tune the trials' configs, watch the cluster, and say
what came of it. The driver's other duties (the store, its heartbeat, what is pending) are orchestrator/launch.py's;
any executor with `run_on_tune`'s signature can stand in for this one (tests run packs in-process).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from workers.core.errors import ClusterGone, LaunchError
from orchestrator.grid import GridError
from workers.core.store import Store

CLUSTER_GONE_S = float(os.environ.get("VPGRID_CLUSTER_GONE_S", 60))  # no resources this long: give up


@dataclass
class Trials:
    """What an executor is asked to run: each trial's config (its runs are in the store's packs) and how."""

    configs: list[dict]
    launch_id: str
    store: Store
    address: Optional[str] = None
    num_cpus: Optional[float] = None
    num_gpus: Optional[float] = None
    progress: bool = True
    max_failures: int = 0
    callbacks: list = field(default_factory=list)  # Tune callbacks, created by `make_callback`


@dataclass
class Executed:
    """What came of the trials: the last line of each errored trial's error, the cluster's GPUs, the seconds the
    trials took, and whether Ctrl-C stopped them. The store, not this, says which runs finished."""

    errors: list[str]
    gpus: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False


def run_on_tune(job: Trials) -> Executed:
    """Run the trials on Ray Tune, a trial per config, each retried up to `max_failures` times."""
    configs, store = job.configs, job.store
    address = job.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files; never wait on the hub
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output ignores verbose=0 and uses stdout
    from ray import tune

    from orchestrator.progress import RunProgress
    from workers.ray_adapter import trainable

    _connect(address, job.num_cpus, job.num_gpus, _runtime_env())
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
        bar = RunProgress(total_runs, watch, enabled=job.progress, max_failures=job.max_failures,
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
                name=job.launch_id, storage_path=storage, verbose=0, callbacks=[bar, *job.callbacks],
                failure_config=tune.FailureConfig(max_failures=job.max_failures),
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
        return Executed(errors, gpus, seconds, watch.interrupted)
    finally:
        ray.shutdown()


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


def make_callback(name: str):
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
