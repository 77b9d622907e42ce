"""Data-plane benchmarks behind `vpgrid bench` (numbers for docs/benchmarks.md, never assertions in tests):

- train:    the throughput table `vpgrid plan --estimate --throughput` reads: per model, images/s of a frozen
            forward and of forward + input-gradient backward through a pad prompt, and the start-up of one run
            (interpreter and imports, model build, first batch). Random weights, built offline.
- loop:     benchmark (a): vpgrid's training loop over that bare step, same model, batch and device.
- protocol: benchmark (c): one small ILM-VP task (demo_cnn on digits) through vpgrid (shared model, test split
            once) and through the reference scripts' protocol (test split every epoch, model built per run).
- batching: benchmark (b), prompt batching over one-at-a-time: workers/bench_batching.py.

Run as `python -m workers.bench NAME [...]`; the `vpgrid bench` command imports this module only when asked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from workers.frozen import prepare_frozen
from workers.prompts import PadPrompter
from workers.run import Context, default_device, run
from workers.core.spec import RunSpec, TrainConfig
from workers.train import Task

# What `vpgrid bench train` measures when neither --models nor a grid names any: the paper's families and the demo.
DEFAULT_MODELS = ("demo_cnn", "resnet18", "resnet34", "resnet50", "deit_tiny", "swin_tiny", "clip_vit_l14_336")
IMPORTS = "import torch, torchvision, timm, open_clip, workers.run"  # what a run's process imports first


def card(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"cpu, {os.cpu_count()} cores"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # wait for queued kernels before reading the clock


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing what a run imports: each reference run pays it."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


class Bare:
    """A frozen model and a pad prompt: the step every VP method repeats, without the loop around it."""

    def __init__(self, model: str, batch: int, device: torch.device, args: dict | None = None):
        t0 = time.perf_counter()
        # as a run reads it (eval mode, channels-last, BatchNorm folded into the convolutions); CLIP's zero-shot head
        # is 1000 classes x 80 templates through the text tower, computed once per weights and cached on the node
        # (hours on 2 CPU cores): not part of a run's step, so not timed here (left at zeros, the same matmul)
        f = prepare_frozen(model, "random", dict(args or {}), Path(tempfile.gettempdir()), device, fill_head=False)
        self.net, self.meta = f.frozen, f.meta
        self.image = min(128, self.meta.input_size // 2)  # a target image inside the canvas, as VP pads it
        self.prompter = PadPrompter(self.meta.input_size, self.image, self.meta.mean, self.meta.std).to(device)
        self.opt = torch.optim.Adam(self.prompter.parameters(), lr=0.01)
        self.x = torch.rand(batch, 3, self.image, self.image, device=device)
        self.device, self.batch = device, batch
        self.forward()  # the first batch (kernel selection, lazy init) is part of starting up
        _sync(device)
        self.build_s = time.perf_counter() - t0

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def forward(self) -> None:
        with torch.no_grad(), self._autocast():
            self.net(self.prompter(self.x))

    def step(self) -> None:
        with self._autocast():
            loss = self.net(self.prompter(self.x)).float().logsumexp(1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def images_per_s(self, fn, steps: int, seconds: float = 0.0) -> float:
        """Images/s of `fn` over `steps` calls (more while under `seconds`), after one warm-up call."""
        fn()
        _sync(self.device)
        n, t0 = 0, time.perf_counter()
        while n < steps or time.perf_counter() - t0 < seconds:
            fn()
            n += 1
            _sync(self.device)
        return self.batch * n / (time.perf_counter() - t0)


def _default_batch(model: str, device: torch.device) -> int:
    if device.type == "cuda":
        return 64
    return 64 if model == "demo_cnn" else 2 if model.startswith("clip_vit_l14") else 8  # minutes, not hours, on 2 cores


def bench_train(models: list[str] | None = None, batch: int | None = None, steps: int = 3) -> dict:
    """The throughput table of this machine (format: orchestrator/estimate.py, docs/cost.md)."""
    device = default_device()
    imports = import_seconds()
    table = {"machine": card(device), "device": device.type, "card": card(device),
             "dtype": "bfloat16" if device.type == "cuda" else "float32",
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": {},
             "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
             "startup_includes": f"a fresh interpreter's `{IMPORTS}` ({imports:.1f} s), the model built with random "
                                 "weights, moved to the device, and its first batch",
             "weights": "random (timings only)"}
    for m in models or DEFAULT_MODELS:
        print(f"  train throughput: {m} ...", file=sys.stderr)
        b = Bare(m, batch or _default_batch(m, device), device)
        n, least = (1, 0.0) if device.type == "cpu" and m.startswith("clip_vit_l14") else (steps, 2.0)  # ~1 min a step
        table["models"][m] = {"input_size": b.meta.input_size, "batch": b.batch,
                              "train_images_per_s": b.images_per_s(b.step, n, least),
                              "forward_images_per_s": b.images_per_s(b.forward, n, least),
                              "startup_s": imports + b.build_s}
        del b
    return table


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


def bench_batching() -> dict:
    """(b): runs/hour with prompt batching over one at a time, for 1-, 10- and 50-shot cells (workers/bench_batching.py)."""
    from workers.bench_batching import bench_prompt_batching

    return {"bench": "batching", **bench_prompt_batching()}


BENCHES = {"train": bench_train, "loop": bench_loop, "protocol": bench_protocol, "batching": bench_batching}


def main(argv: list[str]) -> int:
    """`python -m workers.bench NAME [--models a,b] [--out FILE]`: one JSON object per benchmark on stdout."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m workers.bench")
    p.add_argument("what", nargs="+", choices=list(BENCHES))
    p.add_argument("--models", default=None, help="comma-separated models for `train`")
    p.add_argument("--out", default=None, help="write the `train` table here too")
    a = p.parse_args(argv)
    for w in a.what:
        r = bench_train(a.models.split(",") if a.models else None) if w == "train" else BENCHES[w]()
        if w == "train" and a.out:
            Path(a.out).write_text(json.dumps(r, indent=1) + "\n")
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
