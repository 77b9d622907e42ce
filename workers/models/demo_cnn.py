"""A small CNN source model, pre-trained by vpgrid on the procedural `shapes` dataset.

It lets the demo run the whole study offline: a real source network (trained, not random) that the
compressions then damage. The trained weights ship with vpgrid (`SHIPPED`): every machine starts the demo from
the same bytes, because few-shot visual prompting amplifies the rounding-level differences a pre-training on
another CPU would give. `vpgrid pretrain demo_cnn` remakes them (`pretrain`, `save`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workers.checkpoints import CheckpointError, fetch, load_state_dict, load_strict
from workers.core.schemas import MODELS as CARDS
from workers.models import Built, Checkpoint, MODELS

CARD = CARDS["demo_cnn"]  # its source classes (shapes') and its normalisation


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DemoCNN(nn.Module):
    def __init__(self, num_classes: int = CARD.num_classes, width: int = 32) -> None:
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


DEFAULTS = CARD.defaults()  # input_size, width, seed

# The shipped weights and how they were made (`vpgrid pretrain demo_cnn` with these settings, docs/demo.md).
WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"file": "demo_cnn.safetensors", "sha256": "1f66a66a5cebd5f058e3a2506beaab9af89b198df860f5157c29690906edffcb",
           "made_by": {"width": 16, "epochs": 10, "images": 8000, "seed": 0, "threads": 1}}


def _seeded(width: int, seed: int) -> DemoCNN:
    """The initial weights depend on the seed alone, not on what ran before in this process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DemoCNN(width=width)


def pretrain(width: int = 16, epochs: int = 10, images: int = 8000, seed: int = 0) -> tuple[DemoCNN, float]:
    """A DemoCNN trained on `shapes` with SGD, and its test accuracy on the source task. Bit-reproducible for
    one torch thread count on one CPU kind (float sums are ordered by the threads)."""
    from workers.data import load_dataset

    model = _seeded(width, seed)
    torch.manual_seed(seed)
    data = load_dataset("shapes", size=32, n_train=images, seed=seed)
    mean = torch.tensor(CARD.mean).view(1, 3, 1, 1)
    std = torch.tensor(CARD.std).view(1, 3, 1, 1)
    x, y = (data.train_x - mean) / std, data.train_y
    bs = 128
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * -(-len(x) // bs))
    g = torch.Generator().manual_seed(seed)
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
    return model, (pred == data.test_y).float().mean().item()


def pretrain_to_file(out: Path, width: int, epochs: int, images: int, seed: int, threads: int) -> float:
    """`vpgrid pretrain demo_cnn`: train at `threads` torch threads (the float sums' order, so the bytes, depend on
    it), write safetensors with how it was made, return the source test accuracy."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net, acc = pretrain(width=width, epochs=epochs, images=images, seed=seed)
    finally:
        torch.set_num_threads(before)
    save(net, out, {"width": width, "epochs": epochs, "images": images, "seed": seed, "threads": threads}, acc)
    return acc


def save(model: DemoCNN, path: Path, made_by: dict, source_accuracy: float) -> None:
    """Safetensors (contiguous NCHW tensors), with how it was made in the header; written whole or not at all."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={"made_by": json.dumps(made_by, sort_keys=True),
                                             "source_accuracy": f"{source_accuracy:.4f}"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shipped(args: dict, cache_dir: Path) -> Built:
    """The shipped weights, verified; a clear error, never a re-training or random weights, when they cannot be."""
    made = SHIPPED["made_by"]
    if (args["width"], args["seed"]) != (made["width"], made["seed"]):
        raise CheckpointError(
            f"demo_cnn: pretrained weights ship for width={made['width']}, seed={made['seed']} only, not "
            f"width={args['width']}, seed={args['seed']}; make others with `vpgrid pretrain demo_cnn --width "
            f"{args['width']} --seed {args['seed']} --out FILE` and give `weights: {{path: FILE, sha256: ...}}`")
    path = WEIGHTS_DIR / SHIPPED["file"]
    if not path.is_file():
        raise CheckpointError(f"demo_cnn: the shipped weights {path} are missing; restore them from the repository "
                              f"(git checkout -- {path.name}) or remake them with `vpgrid pretrain demo_cnn --out {path}`")
    try:
        path, digest = fetch(str(path), SHIPPED["sha256"], cache_dir)
    except CheckpointError as e:
        raise CheckpointError(f"demo_cnn: the shipped weights were altered ({e}); restore them from the "
                              "repository") from None
    model = DemoCNN(width=made["width"])
    load_strict(model, load_state_dict(path), str(path))
    return Built(model, f"vpgrid-pretrained on shapes (shipped): {path.name} sha256:{digest[:16]}")


@MODELS.register("demo_cnn")
def demo_cnn(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    args = {**DEFAULTS, **args}
    if weights == "pretrained":
        return _shipped(args, cache_dir)
    if weights == "random":
        return Built(_seeded(args["width"], args["seed"]), f"random init (seed {args['seed']}); not pre-trained")
    model = DemoCNN(width=args["width"])
    load_strict(model, load_state_dict(weights.files["weights"]), str(weights.files["weights"]))
    return Built(model, weights.source)
