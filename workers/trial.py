"""One trial's work, without Ray: read its pack, skip what the store already has, run the rest (or rehearse it),
and publish each run the moment it ends, with the trial's heartbeat beside it. The Ray trainable
(workers/ray_adapter.py) calls this with Ray's node id and `tune.report`; a test can call it in-process.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from workers.core.spec import RunSpec
from workers.core.store import DONE, HEARTBEAT_S, Store
from workers.gate import wait_for_token
from workers.node_cache import node_cache_dir

PROGRESS_EVERY_S = 1.0  # the heartbeat is rewritten after a run at most this often (and every HEARTBEAT_S anyway)

# What each finished run tells Tune (and so Ray's dashboard and logger callbacks); the store stays the record.
REPORTED = ("accuracy", "ece", "conf_correct", "kl_incorrect", "nll", "final_train_loss", "sparsity",
            "train_seconds", "eval_seconds")


def publish(store, result) -> None:
    """A VP run's learned prompt first, then the row that names it: a row never points at a missing file."""
    prompt = getattr(result, "prompt", None)  # workers.run.prompt_of, without importing torch
    if prompt is not None:
        from workers.prompts import prompt_file

        result.prompt_path = store.put_prompt(result.run_key, prompt_file(prompt))
    store.publish(result)


def run_trial(config: dict, node: str, report: Callable[[dict], None], packs: Optional[dict] = None) -> None:
    """One trial: `config` (small: Tune keeps and copies it) and its runs, JSON read from the store (`Store.pack`),
    or from `packs` (trial id -> JSON) when a test gives them. `report` gets each published run's metrics."""
    trial = config["trial_id"]
    if not config.get("rehearse"):
        import torch

        from workers.run import torch_threads

        if config["gpu"] and not config.get("logical_gpus") and not torch.cuda.is_available():
            raise RuntimeError(f"trial {trial} was given {config['gpu']:g} GPU but this worker cannot use "
                               "CUDA (driver, CUDA_VISIBLE_DEVICES or a CPU-only torch); refusing to train on the CPU")
        torch.set_num_threads(torch_threads(config["cpu"]))
    store = Store(config["store"])
    payload = json.loads(packs[trial] if packs is not None else store.pack(trial))
    # Every run here was pending when the driver launched, so a run the store has now was published by an
    # earlier attempt of this trial (Tune retries trials whose worker or node died): skip it. With
    # --retry-failed an old failed row may be that row, so only a done one counts.
    have = store.statuses()
    retry = config.get("retry_failed")
    every = [RunSpec.from_dict(d) for d in payload["runs"]]
    keep = [i for i, s in enumerate(every) if not (have.get(s.run_key) in DONE or (s.run_key in have and not retry))]
    specs = [every[i] for i in keep]
    cache = Path(config["cache"]) if config.get("cache") else node_cache_dir()
    if config.get("rehearse"):  # the rehearsal differs from the real run here only: no torch, no weights, no GPU
        from workers.rehearse import rehearse_pack

        results = rehearse_pack(specs, [payload["seconds"][i] for i in keep], payload["startup_s"],
                                config["rehearse"], cache, config.get("data_root"), trial, node)
    else:
        from workers.run import run_pack

        results = run_pack(specs, cache, trial=trial, data_root=config.get("data_root"), gpu_share=config["gpu"] or None)
    progress = {"runs_total": len(specs), "runs_done": 0, "current": None, "node": node}
    store.heartbeat(trial, progress)
    beat = store.keep_beating(trial, progress, HEARTBEAT_S)  # stops with this process: a dead node's trial goes stale
    written = time.monotonic()
    try:
        for i, result in enumerate(results, 1):
            result.node = node
            wait_for_token()  # test-only: no-op unless VPGRID_TEST_GATE is set
            publish(store, result)
            progress.update(runs_done=i, current=result.run_key)
            if time.monotonic() - written >= PROGRESS_EVERY_S:  # a rehearsal's runs end many a second: not a PUT each
                store.heartbeat(trial, progress)
                written = time.monotonic()
            metrics = {k: getattr(result, k) for k in REPORTED if getattr(result, k) is not None}
            report({"run_key": result.run_key, "ok": int(result.status in DONE), "runs_done": i,
                    "model": result.model, "compression": result.compression, "method": result.method,
                    "dataset": result.dataset, "shots": "full" if result.shots is None else result.shots,
                    "seed": result.seed, **metrics})
    except BaseException:  # the worker is going (its node lost, or an error): the heartbeat stays, naming the node
        beat.stop()        # the driver reports the trial lost with; status counts it as running only while fresh
        raise
    beat.stop()
    store.end_heartbeat(trial)
