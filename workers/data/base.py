"""The dataset registry, the split container and the loading every run goes through. Each dataset's card
(help, arguments, sizes, layout, metadata) is declared in workers/core/schemas/datasets.py.

Kept apart from __init__ so the dataset modules can import it without a cycle.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.core import schemas
from workers.core.registry import Registry
from workers.core.schema import resolve

CACHE_FORMAT = 2  # 2: images uint8 (N,3,H,W), read back memory-mapped; 1 (float32, read into memory) is not reused


@dataclass(frozen=True)
class Crop:
    """A model's own evaluation preprocessing, instead of the VP recipe's squash to (size, size): resize the short
    side to floor(size / crop_pct) with `interpolation`, keeping the aspect ratio, then take the centre
    size x size (torchvision's Resize(int) + CenterCrop). CLIP: bicubic, crop_pct 1.0."""

    interpolation: str = "bicubic"  # "bilinear" | "bicubic"
    crop_pct: float = 1.0

    def sizes(self, size: int, h: int, w: int) -> tuple[int, int, int, int]:
        """(resized h, resized w, top, left) of the centre crop, rounded as torchvision rounds them."""
        short = math.floor(size / self.crop_pct)
        nh, nw = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
        return nh, nw, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


@dataclass
class Splits:
    """Images: uint8 (N,3,H,W) for decoded files (4x smaller than float; `as_float` where used), or float32 in
    [0,1] for generated sets; text: int64 token ids (N, L)."""

    train_x: Tensor
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor
    classes: list[str]


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset", schemas.DATASETS)


def as_float(x: Tensor) -> Tensor:
    """A batch of images as float32 in [0,1]: uint8 / 255, exactly what decoding to float did before (the same
    rounding, so results do not change); float images pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def resize(x: Tensor, size: int, crop: Crop | None = None) -> Tensor:
    """Float (N,C,H,W) in [0,1] to size x size: bilinear squash (the VP recipe), or `crop`'s resize and centre
    crop. Done once at load time so training never resizes per batch."""
    if crop is None:
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    nh, nw, top, left = crop.sizes(size, *x.shape[-2:])
    if (nh, nw) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(nh, nw), mode=crop.interpolation, align_corners=False, antialias=True).clamp_(0, 1)
    return x[..., top:top + size, left:left + size].contiguous()


def load_dataset(name: str, size: int | None = None, root: str | None = None, crop: Crop | None = None,
                 **args) -> Splits:
    entry = DATASETS.entry(name)
    # Defaults and checks come from the card; cap_shots is for the few-shot sampler.
    args = {k: v for k, v in resolve(entry.card, args, f"dataset {name!r}").items() if k != "cap_shots"}
    meta = entry.card
    if size is None:
        size = meta.input_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"dataset {name!r}: size must be a positive int, got {size!r}")
    if crop is None:
        return entry.obj(size, root, **args)
    if meta.modality != "image":
        raise ValueError(f"dataset {name!r} holds {meta.modality}, not images: it has no crop preprocessing")
    return entry.obj(size, root, crop=crop, **args)


def cached_dataset(name: str, size: int, root: str | None, args: dict, cache_dir: Path,
                   crop: Crop | None = None) -> Splits:
    """load_dataset, decoded and resized once: later calls (other trials, other nodes sharing the cache) read the
    tensors back instead of decoding images again.

    The file is read memory-mapped (torch.load mmap=True): the tensors' pages are the file's pages in the OS page
    cache, shared by every actor on the node instead of copied into each, and only the pages a run touches (its
    few-shot images, the test batches) are read. Written to a hidden temporary, fsynced, then renamed."""
    import hashlib
    import json

    from workers.node_cache import once

    key = json.dumps({"name": name, "size": size, "root": str(root), "args": args, "format": CACHE_FORMAT,
                      "crop": asdict(crop) if crop else None}, sort_keys=True, default=str)
    tag = f"{name}-{size}" + ("-crop" if crop else "")

    def decode(tmp: Path) -> None:  # one process decodes; trials starting together wait and read
        d = load_dataset(name, size, root, crop=crop, **args)
        torch.save({"train_x": d.train_x, "train_y": d.train_y, "test_x": d.test_x, "test_y": d.test_y,
                    "classes": list(d.classes)}, tmp)

    path = once(Path(cache_dir) / "datasets" / f"{tag}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt", decode)
    t = torch.load(path, mmap=True, weights_only=True)
    return Splits(t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(t["classes"]))
