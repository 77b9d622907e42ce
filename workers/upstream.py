"""Upstream accuracy: a model variant's top-1 accuracy on ImageNet val, the source task the paper's claims rest on.

ImageNet val lives under the data root like the other datasets, in torchvision's folder layout:
`<root>/imagenet/val/<wnid>/*.JPEG` (what torchvision.datasets.ImageNet's val split unpacks to). Labels are the
standard ImageNet-1k indices, the position of the wnid in the sorted list of the 1000 (timm's ImageNetInfo), so a
val set holding only some classes is still scored against all 1000 outputs. Each image gets the model's own
evaluation preprocessing (ModelMeta: short side to input_size / crop_pct, interpolation, centre crop, mean/std).

Computed once per variant and val set, cached in the node cache (`<cache>/upstream/`); no val set under the data
root, or a model whose source task is not ImageNet-1k, gives None (a null column), never a made-up number.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workers.data import Crop
from workers.data.vision import crop_image
from workers.models import ModelMeta
from workers.train import to_canvas

VAL_DIR = "imagenet/val"
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


def is_imagenet_classifier(meta: ModelMeta) -> bool:
    return meta.num_classes == 1000 and meta.source.startswith("ImageNet-1k")


@torch.no_grad()
def accuracy(model: torch.nn.Module, meta: ModelMeta, files: list[tuple[Path, int]], device: torch.device,
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


def upstream_accuracy(model: torch.nn.Module, meta: ModelMeta, variant_key: str, root: str | None, cache_dir: Path,
                      device: torch.device) -> float | None:
    """Top-1 on ImageNet val, cached by (variant, val set: file names and sizes, preprocessing)."""
    if not is_imagenet_classifier(meta) or not (files := imagenet_val(root)):
        return None
    base = Path(root).expanduser() / VAL_DIR
    val = hashlib.sha256(json.dumps([(str(f.relative_to(base)), f.stat().st_size, y) for f, y in files]
                                    + [meta.input_size, meta.interpolation, meta.crop_pct]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "upstream" / f"{variant_key}-{val}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one actor evaluates; others on the node wait and read
        if not path.exists():
            acc = accuracy(model, meta, files, device)
            tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
            tmp.write_text(json.dumps({"accuracy": acc, "n": len(files)}))
            os.replace(tmp, path)
    return float(json.loads(path.read_text())["accuracy"])
