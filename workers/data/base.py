"""The dataset registry, its metadata and the split container.

Kept apart from __init__ so the dataset modules can import it without a cycle.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from workers.registry import Registry


@dataclass(frozen=True)
class DatasetMeta:
    input_size: int  # default side the target images are resized to inside the prompt canvas
    num_classes: int
    description: str


@dataclass
class Splits:
    train_x: Tensor  # float32 (N,3,H,W) in [0,1], already resized to the requested size
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor
    classes: list[str]


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of (N,C,H,W), done once at load time so training never resizes per batch."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def load_dataset(name: str, size: int | None = None, root: str | None = None, **args) -> Splits:
    fn = DATASETS.get(name)
    # Check arg names here so a typo in a grid says which dataset and what it accepts.
    params = inspect.signature(fn).parameters
    valid = sorted(p for p in params if p not in ("size", "root"))
    for key in args:
        if key not in valid:
            raise ValueError(f"dataset {name!r}: unknown arg {key!r} (valid args: {', '.join(valid) or 'none'})")
    if size is None:
        size = DATASETS.meta(name).input_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"dataset {name!r}: size must be a positive int, got {size!r}")
    return fn(size, root, **args)
