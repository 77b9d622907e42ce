"""The one place where the data plane meets Ray: a Tune function trainable that runs a pack of runs.

Each finished run is published to the store by the worker itself, so a run is recorded the moment it
ends, whatever happens to the driver afterwards.
"""
from __future__ import annotations

from ray import tune


def trainable(config: dict) -> None:
    config = config["pack"]
    import torch

    from orchestrator.store import Store
    from workers.run import run_pack
    from workers.spec import RunSpec

    torch.set_num_threads(max(1, int(config["cpu"])))
    store = Store(config["store"])
    trial = config["trial_id"]
    # Every run here was pending when the driver launched, so a run with its own file now was published by an
    # earlier attempt of this trial (Tune retries failed trials): skip it. With --retry-failed an old failed
    # row may be that file, so only an ok one counts. One file check per run, not a read of the whole store.
    def done(key: str) -> bool:
        status = store.status_of(key)
        return status == "ok" or (status is not None and not config.get("retry_failed"))

    specs = [s for s in map(RunSpec.from_dict, config["runs"]) if not done(s.run_key)]
    store.heartbeat(trial, {"runs_total": len(specs), "runs_done": 0, "current": None})
    try:
        for i, result in enumerate(run_pack(specs, config["cache"], trial=trial, data_root=config.get("data_root")), 1):
            store.publish(result)
            store.heartbeat(trial, {"runs_total": len(specs), "runs_done": i, "current": result.run_key})
            tune.report({"run_key": result.run_key, "ok": int(result.status == "ok"), "runs_done": i})
    finally:
        store.end_heartbeat(trial)
