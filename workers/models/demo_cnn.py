"""A small CNN source model, pre-trained by vpgrid on the procedural `shapes` dataset.

It lets the demo run the whole study offline: a real source network (trained, not random) that the
compressions then damage. The trained weights are cached per configuration, so a sweep trains it once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workers import schemas
from workers.checkpoints import load_state_dict, load_strict, sha256_file
from workers.data import DATASETS
from workers.models import Built, Checkpoint, ModelMeta, MODELS

SOURCE_CLASSES = DATASETS.meta("shapes").num_classes

SHAPES_MEAN = (0.5, 0.5, 0.5)
SHAPES_STD = (0.25, 0.25, 0.25)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DemoCNN(nn.Module):
    def __init__(self, num_classes: int = SOURCE_CLASSES, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


DEFAULTS = schemas.MODELS["demo_cnn"].defaults()  # input_size, width, pretrain_epochs, pretrain_images, seed


def _seeded(args: dict) -> DemoCNN:
    """The initial weights depend on the seed alone, not on what ran before in this process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args["seed"])
        return DemoCNN(width=args["width"])


def _pretrain(model: DemoCNN, args: dict) -> float:
    """Train on `shapes` with SGD; returns test accuracy on the source task."""
    from workers.data import load_dataset

    torch.manual_seed(args["seed"])
    data = load_dataset("shapes", size=32, n_train=args["pretrain_images"], seed=args["seed"])
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    x, y = (data.train_x - mean) / std, data.train_y
    epochs, bs = args["pretrain_epochs"], 128
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * -(-len(x) // bs))
    g = torch.Generator().manual_seed(args["seed"])
    model.train().to(memory_format=torch.channels_last)  # NHWC: ~1.4x faster steps on CPU (measured), same function
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model((data.test_x - mean) / std).argmax(1)
    return (pred == data.test_y).float().mean().item()


def _cached_pretrained(args: dict, cache_dir: Path) -> Built:
    trained_by = {k: v for k, v in args.items() if k != "input_size"}  # the canvas does not change training
    tag = hashlib.sha256(json.dumps(trained_by, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"demo_cnn-{tag}.pt"
    model = _seeded(args)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One process trains; trials that start at the same time wait on the lock, then load the file.
    with open(cache_dir / f".demo_cnn-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            # Every trial that needs this model waits on the lock meanwhile: use the cores they leave idle.
            threads = torch.get_num_threads()
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(max(threads, min(4, cores)))
            try:
                acc = _pretrain(model, args)
            finally:
                torch.set_num_threads(threads)
            tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
            torch.save({"state_dict": model.state_dict(), "source_accuracy": torch.tensor(acc)}, tmp)
            os.replace(tmp, path)
    load_strict(model, load_state_dict(path), str(path))
    return Built(model, f"vpgrid-pretrained on shapes: {path} sha256:{sha256_file(path)[:16]}")


@MODELS.register("demo_cnn", meta=ModelMeta(input_size=32, num_classes=SOURCE_CLASSES, source="procedural shape classes",
                                            mean=SHAPES_MEAN, std=SHAPES_STD, head="fc"))
def demo_cnn(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    args = {**DEFAULTS, **args}
    if weights == "pretrained":
        return _cached_pretrained(args, cache_dir)
    if weights == "random":
        return Built(_seeded(args), f"random init (seed {args['seed']}); not pre-trained")
    model = DemoCNN(width=args["width"])
    load_strict(model, load_state_dict(weights.files["weights"]), str(weights.files["weights"]))
    return Built(model, weights.source)
