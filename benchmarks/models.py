"""The model-speed benchmarks of `vpgrid bench` (numbers for docs/benchmarks.md, never assertions in tests):

- loop:     benchmark (a): vpgrid's training loop over the bare step of workers/bench.py (`Bare`), same model,
            batch and device.
- protocol: benchmark (c): one small ILM-VP task (demo_cnn on digits) through vpgrid (shared model, test split
            once) and through the reference scripts' protocol (test split every epoch, model built per run).
Benchmark (b), prompt batching, is benchmarks/batching.py.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from workers.bench import Bare, import_seconds
from workers.core.spec import RunSpec, TrainConfig
from workers.run import Context, default_device, run
from workers.train import Task


# ---- (a) the training loop over the bare step ----

def loop_images_per_s(model, meta, task: Task, spec: RunSpec, device: torch.device) -> float:
    """Training images/s of vpgrid's VP loop on `task` (the test split is evaluated after, outside the timing).
    The one call into the loop: repoint it here when the loop changes."""
    from workers.methods.vp import train_prompt

    out = train_prompt(model, meta, task, spec, device)
    return spec.train.epochs * len(task.train_y) / out.train_seconds


def bench_loop(model: str = "demo_cnn", batch: int = 64, epochs: int = 3, batches_per_epoch: int = 8) -> dict:
    """(a): the loop (rlm: no remaps, no per-epoch evaluation) against the bare frozen forward + input-gradient
    backward of the same model, batch and device. Goal >= 0.9."""
    device = default_device()
    b = Bare(model, batch, device)
    n = batch * batches_per_epoch
    g = torch.Generator().manual_seed(0)
    num_classes = min(10, b.meta.num_classes)
    # uint8 images on the host, as the dataset cache holds them: the loop's own copies and conversion count
    x = torch.randint(0, 256, (n, 3, b.image, b.image), dtype=torch.uint8, generator=g)
    task = Task(x, torch.arange(n) % num_classes, x[:batch], torch.arange(batch) % num_classes,
                [str(c) for c in range(num_classes)])
    spec = RunSpec(model=model, method="rlm", dataset="digits", shots=None, seed=0, weights="random",
                   train=TrainConfig(epochs=epochs, batch_size=batch))
    loop_s = []
    bare_s = []
    for _ in range(2):  # interleaved, best of two: both see the same load on shared cores
        bare_s.append(b.images_per_s(b.step, epochs * batches_per_epoch))
        loop_s.append(loop_images_per_s(b.net, b.meta, task, spec, device))
    loop, bare = max(loop_s), max(bare_s)
    return {"bench": "loop", "model": model, "device": device.type, "batch": batch, "images": n, "epochs": epochs,
            "loop_images_per_s": loop, "bare_images_per_s": bare, "loop_over_bare": loop / bare}


# ---- (c) vpgrid against the reference protocol ----

def _protocol_specs(seeds: int, shots: int, epochs: int) -> list[RunSpec]:
    train = TrainConfig(epochs=epochs, lr=0.01, batch_size=32)
    return [RunSpec(model="demo_cnn", method="ilm", dataset="digits", shots=shots, seed=s, weights="random",
                    train=train) for s in range(seeds)]


def bench_protocol(seeds: int = 3, shots: int = 10, epochs: int = 20) -> dict:
    """(c): the same ILM-VP runs, back to back in one process: vpgrid's way (one context: the model built and the
    dataset read once; the test split evaluated once per run) and the reference protocol's (a fresh context per
    run, as one process per run builds its model and reads its data; the test split after every epoch, as
    `train.eval_every: 1`). The reference's interpreter start and imports are not in this wall time."""
    device = default_device()
    specs = _protocol_specs(seeds, shots, epochs)
    cache = Path(tempfile.mkdtemp(prefix="vpgrid-bench-"))
    # warm the dataset cache and the allocator for both, outside the timings
    run(replace(specs[0], seed=99), Context(cache, device))

    def ours() -> list:
        ctx = Context(cache, device)
        return [run(s, ctx) for s in specs]

    def reference() -> list:
        ref = [replace(s, train=replace(s.train, eval_every=1)) for s in specs]
        return [run(s, Context(cache, device)) for s in ref]

    times = {"vpgrid": [], "reference": []}
    for _ in range(2):  # alternated, best of two: both see the same load on shared cores
        for name, fn in (("vpgrid", ours), ("reference", reference)):
            t0 = time.perf_counter()
            rows = fn()
            times[name].append(time.perf_counter() - t0)
            bad = [r.error for r in rows if r.status != "ok"]
            if bad:
                raise RuntimeError(f"bench protocol: a run failed: {bad[0]}")
    ours_s, ref_s = min(times["vpgrid"]), min(times["reference"])
    return {"bench": "protocol", "task": f"demo_cnn (random weights) on digits, ilm, {shots} shots, {epochs} epochs, "
                                         f"{seeds} seeds", "device": device.type, "vpgrid_s": ours_s,
            "reference_s": ref_s, "reference_over_vpgrid": ref_s / ours_s,
            "reference_per_run_imports_s_not_included": import_seconds()}
