"""`vpgrid bench train`: the throughput table `vpgrid plan --estimate --throughput` reads. Per model, images/s of a
frozen forward and of forward + input-gradient backward through a pad prompt (`Bare`, the step every VP method
repeats), and the start-up of one run (interpreter and imports, model build, first batch). Random weights, built
offline. The `vpgrid bench` command imports this module only when asked (it imports torch); the benchmarks that
measure rather than feed the planner live in benchmarks/.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workers.frozen import prepare_frozen
from workers.prompts import PadPrompter
from workers.run import default_device

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
             "threads": torch.get_num_threads(),
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
