"""Launch a grid on Ray Tune: validate, plan, skip what the store has, run the rest.

The store decides what is done; Ray Tune's experiment state is never read back. Resume is a launch of
the grid saved in the store.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.grid import Grid, GridError, expand
from orchestrator.plan import Trial, pack
from orchestrator.validate import check_grid
from orchestrator.store import Store
from workers.spec import RunSpec


@dataclass
class LaunchSummary:
    store: Path
    total: int
    skipped: int
    launched: int
    ok: int
    failed: int
    trials: int
    seconds: float
    errored_trials: int


def check_names(runs: list[RunSpec], source: str) -> dict[str, dict]:
    """Every model, compression, dataset and method must be registered. Imports the workers (torch).

    Returns the models' registered default resources."""
    from workers import catalog

    problems = catalog.check(runs)
    if problems:
        raise GridError(f"{source}: " + "; ".join(problems))
    return catalog.default_resources({r.model for r in runs})


def pending(runs: list[RunSpec], store: Store, retry_failed: bool) -> list[RunSpec]:
    status = store.statuses()
    return [r for r in runs if status.get(r.run_key) != "ok" and (retry_failed or r.run_key not in status)]


def _trial_config(t: Trial, store: Store, cache: Path, data_root: Optional[str], retry_failed: bool) -> dict:
    return {"trial_id": t.trial_id, "runs": [r.to_dict() for r in t.runs], "cpu": t.cpu, "gpu": t.gpu,
            "store": str(store.root), "cache": str(cache), "data_root": data_root, "retry_failed": retry_failed}


def launch(grid: Grid, grid_text: str, source: str, store_dir: Path, *, address: Optional[str] = None,
           num_cpus: Optional[float] = None, num_gpus: Optional[float] = None, retry_failed: bool = False,
           cache_dir: Optional[Path] = None, data_root: Optional[str] = None, progress: bool = True) -> LaunchSummary:
    t_start = time.time()
    check_grid(grid, source)  # names and args against the schemas, torch-free, as `vpgrid plan` does
    runs = expand(grid, source)
    defaults = check_names(runs, source)  # before the store exists: a bad grid leaves nothing behind
    store = Store(store_dir)
    store.create(grid_text)
    todo = pending(runs, store, retry_failed)
    trials = pack(grid, todo, defaults)
    cache = Path(cache_dir or os.environ.get("VPGRID_CACHE") or store.root.parent / ".cache").resolve()
    data_root = data_root or os.environ.get("VPGRID_DATA") or grid.data_root
    data_root = str(Path(data_root).expanduser().resolve()) if data_root else None
    summary = LaunchSummary(store.root, len(runs), len(runs) - len(todo), len(todo), 0, 0, len(trials), 0.0, 0)
    if not trials:
        return summary
    store.clear_heartbeats()  # a killed earlier launch leaves stale ones
    launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    store.write_launch({"launch_id": launch_id, "pid": os.getpid(), "host": socket.gethostname(),
                        "started": t_start, "runs": len(todo), "trials": len(trials)})
    configs = [_trial_config(t, store, cache, data_root, retry_failed) for t in trials]
    ok, failed, errored = _run_tune(configs, launch_id, store, address, num_cpus, num_gpus, progress)
    summary.ok, summary.failed, summary.errored_trials = ok, failed, errored
    store.compact()
    store.write_launch({**store.launch_info(), "finished": time.time()})
    summary.seconds = time.time() - t_start
    return summary


def _run_tune(configs: list[dict], launch_id: str, store: Store, address, num_cpus, num_gpus,
              progress: bool) -> tuple[int, int, int]:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files; never wait on the hub
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output ignores verbose=0 and uses stdout
    import ray
    from ray import tune

    from orchestrator.progress import RunProgress
    from workers.ray_adapter import trainable

    # Trials import the project from the driver's tree, wherever their working directory is.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                              os.environ.get("PYTHONPATH")])),
                                "HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False, configure_logging=False)
    try:
        total_runs = sum(len(c["runs"]) for c in configs)
        bar = RunProgress(total_runs, enabled=progress)
        resources = tune.with_resources(trainable, lambda cfg: {"cpu": cfg["pack"]["cpu"], "gpu": cfg["pack"]["gpu"]})
        tuner = tune.Tuner(
            resources,
            param_space={"pack": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(
                reuse_actors=True,
                trial_name_creator=lambda t: t.config["pack"]["trial_id"],
                trial_dirname_creator=lambda t: t.config["pack"]["trial_id"]),
            run_config=tune.RunConfig(
                name=launch_id, storage_path=str(store.meta_dir / "tune"), verbose=0, callbacks=[bar],
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
        )
        with bar:
            grid = tuner.fit()
        errored = sum(1 for r in grid if r.error is not None)
        return bar.ok, bar.failed, errored
    finally:
        ray.shutdown()
