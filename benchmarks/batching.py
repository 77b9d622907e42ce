"""Benchmark (b), prompt batching: runs/hour of a cell trained one run at a time and as one batch, in one process.

A cell is the paper's: rlm/flm/ilm x 3 seeds of one (variant, dataset, shots), batch size 8/32/64 for 1/10/50 shots.
Both ways go through the worker's own path (`workers.run.run_group`), on one loaded variant, so the ratio is
what batching changes and nothing else. Weights are random by default: the cost is the same as pre-trained ones.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from workers.run import Context, auto_prompt_batch, batches, default_device, run_group
from workers.core.spec import RunSpec, TrainConfig

PAPER_BATCH = {1: 8, 10: 32, 50: 64}


def _cell(model: str, model_args: dict, dataset: str, shots: int, epochs: int, input_size: int | None,
          seeds: tuple[int, ...], methods: tuple[str, ...]) -> list[RunSpec]:
    train = TrainConfig(epochs=epochs, batch_size=PAPER_BATCH.get(shots, 64), input_size=input_size)
    return [RunSpec(model=model, method=m, dataset=dataset, shots=shots, seed=s, weights="random",
                    model_args=model_args, train=train) for m in methods for s in seeds]


def bench_prompt_batching(model: str = "demo_cnn", model_args: dict | None = None, dataset: str = "digits",
                          input_size: int | None = 16, shots: tuple[int, ...] = (1, 10, 50), epochs: int = 3,
                          seeds: tuple[int, ...] = (1, 2, 3), methods: tuple[str, ...] = ("rlm", "flm", "ilm"),
                          device: str | None = None, cache_dir: str | None = None) -> dict:
    """{"bench": "batching", "device", "model", "dataset", "epochs", "cells": {shots: {runs, prompt_batches, alone_runs_per_hour,
    batched_runs_per_hour, speedup, same_mappings}}}. Batched as a worker batches with `prompt_batch: auto`
    (`prompt_batches`: the runs in each batch). `same_mappings`: both ways gave the same label mappings."""
    dev = torch.device(device) if device else default_device()
    ctx = Context(Path(cache_dir or tempfile.mkdtemp(prefix="vpgrid-bench-")), dev)
    out = {"bench": "batching", "device": str(dev), "model": model, "dataset": dataset, "epochs": epochs, "cells": {}}
    for k in shots:
        specs = _cell(model, model_args or {}, dataset, k, epochs, input_size, seeds, methods)
        run_group(specs[:1], ctx)  # warm: the variant, the dataset, the allocator
        t0 = time.perf_counter()
        alone = [run_group([s], ctx)[0] for s in specs]
        t_alone = time.perf_counter() - t0
        groups = batches(specs, lambda spec: auto_prompt_batch(spec, ctx, None))  # as a worker does, prompt_batch auto
        t0 = time.perf_counter()
        batched = [row for g in groups for row in run_group(g, ctx)]
        t_batched = time.perf_counter() - t0
        bad = [r.error for r in alone + batched if r.status != "ok"]
        if bad:
            raise RuntimeError(f"benchmark run failed: {bad[0]}")
        out["cells"][str(k)] = {
            "runs": len(specs), "prompt_batches": [len(g) for g in groups],
            "alone_runs_per_hour": 3600 * len(specs) / t_alone,
            "batched_runs_per_hour": 3600 * len(specs) / t_batched, "speedup": t_alone / t_batched,
            "same_mappings": [a.label_mapping for a in alone] == [b.label_mapping for b in batched]}
    return out



if __name__ == "__main__":  # python -m benchmarks.batching '{"model": "resnet18", "shots": [1]}'
    import json
    import sys

    print(json.dumps(bench_prompt_batching(**json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}), indent=1))
