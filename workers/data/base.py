"""The dataset registry, its metadata and the split container.

Kept apart from __init__ so the dataset modules can import it without a cycle.
"""
from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workers import schemas
from workers.registry import Registry
from workers.schema import resolve


@dataclass(frozen=True)
class DatasetMeta:
    input_size: int  # default side the target images are resized to inside the canvas; tokens per text
    num_classes: int
    description: str
    modality: str = "image"  # "image": float (N,3,s,s) in [0,1]; "text" / "dna": int64 token ids (N, L)
    bundled: bool = False  # needs no files (generated or shipped with a package)


@dataclass
class Splits:
    train_x: Tensor  # images: float32 (N,3,H,W) in [0,1] at the requested size; text: int64 token ids (N, L)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor
    classes: list[str]


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset", schemas.DATASETS)


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of (N,C,H,W), done once at load time so training never resizes per batch."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def load_dataset(name: str, size: int | None = None, root: str | None = None, **args) -> Splits:
    entry = DATASETS.entry(name)
    # Defaults and checks come from workers/schemas/datasets.py; cap_shots is for the few-shot sampler.
    args = {k: v for k, v in resolve(entry.schema, args, f"dataset {name!r}").items() if k != "cap_shots"}
    if size is None:
        size = DATASETS.meta(name).input_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"dataset {name!r}: size must be a positive int, got {size!r}")
    return entry.obj(size, root, **args)


def cached_dataset(name: str, size: int, root: str | None, args: dict, cache_dir: Path) -> Splits:
    """load_dataset, decoded and resized once: later calls (other trials, other nodes sharing the cache)
    read the tensors back instead of decoding images again."""
    import fcntl
    import hashlib
    import json
    import os

    key = json.dumps({"name": name, "size": size, "root": str(root), "args": args}, sort_keys=True, default=str)
    path = Path(cache_dir) / "datasets" / f"{name}-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process decodes; trials starting together wait and read
        if not path.exists():
            d = load_dataset(name, size, root, **args)
            tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
            torch.save({"train_x": d.train_x, "train_y": d.train_y, "test_x": d.test_x, "test_y": d.test_y,
                        "classes": list(d.classes)}, tmp)
            os.replace(tmp, path)
    t = torch.load(path, weights_only=True)
    return Splits(t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(t["classes"]))
