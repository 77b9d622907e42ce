"""Upstream accuracy: a model variant's top-1 accuracy on ImageNet val, the source task the paper's claims rest on.

ImageNet val lives under the data root like the other datasets, in torchvision's folder layout:
`<root>/imagenet/val/<wnid>/*.JPEG` (what torchvision.datasets.ImageNet's val split unpacks to). Labels are the
standard ImageNet-1k indices, the position of the wnid in the sorted list of the 1000 (timm's ImageNetInfo), so a
val set holding only some classes is still scored against all 1000 outputs. Each image gets the model's own
evaluation preprocessing (ModelCard: short side to input_size / crop_pct, interpolation, centre crop, mean/std).

Computed once per variant and val set, cached in the node cache (`<cache>/upstream/`); no val set under the data
root, or a model whose source task is not ImageNet-1k, gives None (a null column), never a made-up number.

A model whose source task is vpgrid's procedural `shapes` (the demo's demo_cnn, workers/core/classnames.py) is scored on
a held-out shapes split instead: SHAPES_HELD_OUT images rendered from a generation seed no pre-training uses (the
pre-training renders from seeds 2s and 2s + 1 of its own seed s, small numbers), at the model's input size. Cheap
(a forward pass over 1,000 32-px images) and cached the same way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workers.data import Crop
from workers.data.vision import crop_image
from workers.models import ModelCard
from workers.train import to_canvas

VAL_DIR = "imagenet/val"
SHAPES_HELD_OUT = {"n_test": 1000, "seed": 100_003}  # its test stream is rendered from seed 200,007
EXTENSIONS = (".jpeg", ".jpg", ".png")


def imagenet_val(root: str | None) -> list[tuple[Path, int]] | None:
    """(file, ImageNet-1k index) of every val image under the root, sorted; None when there is no val folder."""
    if root is None or not (base := Path(root).expanduser() / VAL_DIR).is_dir():
        return None
    from timm.data import ImageNetInfo

    index = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    out = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise ValueError(f"ImageNet val under {base}: folder {folder.name!r} is not an ImageNet-1k wnid "
                             f"(expected torchvision's layout {VAL_DIR}/<wnid>/*.JPEG)")
        out += [(f, index[folder.name]) for f in sorted(folder.iterdir()) if f.suffix.lower() in EXTENSIONS]
    return out or None


def is_imagenet_classifier(meta: ModelCard) -> bool:
    return meta.num_classes == 1000 and meta.source.startswith("ImageNet-1k")


@torch.no_grad()
def accuracy(model: torch.nn.Module, meta: ModelCard, files: list[tuple[Path, int]], device: torch.device,
             batch_size: int = 64) -> float:
    crop = Crop(meta.interpolation, meta.crop_pct)
    correct = 0
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        x = torch.stack([torch.from_numpy(np.array(crop_image(Image.open(f).convert("RGB"), meta.input_size, crop),
                                                   dtype=np.uint8)).permute(2, 0, 1) for f, _ in chunk])
        pred = model(to_canvas(x.to(device), meta)).argmax(1).cpu()
        correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
    return correct / len(files)


@torch.no_grad()
def shapes_accuracy(model: torch.nn.Module, meta: ModelCard, device: torch.device, batch_size: int = 250) -> float:
    """Top-1 on the held-out shapes split (SHAPES_HELD_OUT) at the model's input size."""
    from workers.data import load_dataset

    data = load_dataset("shapes", size=meta.input_size, n_train=1, **SHAPES_HELD_OUT)
    correct = 0
    for i in range(0, len(data.test_x), batch_size):
        pred = model(to_canvas(data.test_x[i:i + batch_size].to(device), meta)).argmax(1).cpu()
        correct += int((pred == data.test_y[i:i + batch_size]).sum())
    return correct / len(data.test_x)


def upstream_accuracy(model: torch.nn.Module, meta: ModelCard, variant_key: str, root: str | None, cache_dir: Path,
                      device: torch.device, name: str = "") -> float | None:
    """Top-1 on the source task: ImageNet val, cached by (variant, val set: file names and sizes, preprocessing);
    or the held-out shapes split for a model (`name`) whose source task is shapes."""
    from workers.core.classnames import SOURCE_CLASSES

    if SOURCE_CLASSES.get(name) == "shapes" and meta.num_classes == 20:
        key = hashlib.sha256(json.dumps(["shapes", SHAPES_HELD_OUT, meta.input_size]).encode()).hexdigest()[:16]
        return _cached(Path(cache_dir) / "upstream" / f"{variant_key}-{key}.json",
                       lambda: shapes_accuracy(model, meta, device), len_=SHAPES_HELD_OUT["n_test"])
    if not is_imagenet_classifier(meta) or not (files := imagenet_val(root)):
        return None
    base = Path(root).expanduser() / VAL_DIR
    val = hashlib.sha256(json.dumps([(str(f.relative_to(base)), f.stat().st_size, y) for f, y in files]
                                    + [meta.input_size, meta.interpolation, meta.crop_pct]).encode()).hexdigest()[:16]
    return _cached(Path(cache_dir) / "upstream" / f"{variant_key}-{val}.json",
                   lambda: accuracy(model, meta, files, device), len_=len(files))


def _cached(path: Path, measure, len_: int) -> float:
    """measure() once per node (one actor evaluates; others on the node wait and read), kept in `path`."""
    from workers.node_cache import once

    once(path, lambda tmp: tmp.write_text(json.dumps({"accuracy": measure(), "n": len_})))
    return float(json.loads(path.read_text())["accuracy"])
