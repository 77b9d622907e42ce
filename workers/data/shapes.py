"""A procedural source dataset: 10 shapes x 2 colour families = 20 classes, rendered with torch.

It stands in for ImageNet-style pre-training in the offline demo. Shapes vary in position, scale
and small rotation, colours are jittered within their family, the background is tinted noise: a
small CNN learns it, but only by learning shape (edges, corners, holes) as well as colour.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from workers.data.base import DATASETS, Crop, Splits


def _plus(u: Tensor, v: Tensor) -> Tensor:
    return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))


# Masks in shape coordinates (u, v), roughly within the unit square; v points down.
SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "disc": lambda u, v: u**2 + v**2 <= 1,
    "ring": lambda u, v: ((u**2 + v**2) <= 1) & ((u**2 + v**2) >= 0.36),
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8,
    "frame": lambda u, v: (torch.maximum(u.abs(), v.abs()) <= 0.85) & (torch.maximum(u.abs(), v.abs()) >= 0.5),
    "diamond": lambda u, v: u.abs() + v.abs() <= 1,
    "triangle": lambda u, v: (v <= 0.8) & (u.abs() <= (v + 1) / 1.8),
    "plus": _plus,
    "x": lambda u, v: _plus((u + v) / math.sqrt(2), (u - v) / math.sqrt(2)),
    "hbar": lambda u, v: (u.abs() <= 1) & (v.abs() <= 0.3),
    "vbar": lambda u, v: (u.abs() <= 0.3) & (v.abs() <= 1),
}
# Hue ranges (fraction of the colour wheel) of the two colour families.
FAMILIES: dict[str, tuple[float, float]] = {"warm": (-0.05, 0.15), "cool": (0.45, 0.7)}
CLASSES = [f"{c}_{s}" for c in FAMILIES for s in SHAPES]


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(N,) each -> (N,3); the standard piecewise formula written with tensor ops."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * (h % 1)[:, None]) % 6
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def render(labels: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Images (N,3,size,size) in [0,1] for class ids `labels`, all randomness drawn from `g`."""
    n = len(labels)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    shape_id, family = labels % len(SHAPES), labels // len(SHAPES)
    # Geometry: radius 22-40% of the side, centred so the shape stays (almost) inside.
    r = (0.22 + 0.18 * rand(n)) * size
    cx = r + rand(n) * (size - 2 * r)
    cy = r + rand(n) * (size - 2 * r)
    theta = (rand(n) - 0.5) * math.radians(30)  # small rotations keep hbar/vbar and square/diamond apart
    px = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (px[None, None, :] - cx[:, None, None]) / r[:, None, None]
    dy = (px[None, :, None] - cy[:, None, None]) / r[:, None, None]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for i, fn in enumerate(SHAPES.values()):
        sel = shape_id == i
        if sel.any():
            mask[sel] = fn(u[sel], v[sel])
    # Colour: hue jittered inside the family, bright and saturated enough to read against the background.
    lo = torch.tensor([FAMILIES[f][0] for f in FAMILIES])[family]
    hi = torch.tensor([FAMILIES[f][1] for f in FAMILIES])[family]
    fg = _hsv_to_rgb(lo + (hi - lo) * rand(n), 0.6 + 0.4 * rand(n), 0.65 + 0.35 * rand(n))
    # Background: a dim, weakly tinted random colour plus pixel noise.
    bg = _hsv_to_rgb(rand(n), 0.3 * rand(n), 0.05 + 0.35 * rand(n))
    img = torch.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])
    img = img + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp_(0, 1)


def _split(n: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Balanced classes: n // C each, the remainder spread over the first classes, then shuffled.
    y = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    return render(y, size, g), y


@DATASETS.register("shapes")
def shapes(size: int, root: str | None, n_train: int, n_test: int, seed: int, crop: Crop | None = None) -> Splits:
    # Rendered at `size` itself: a crop (a model's own preprocessing) has no larger original to start from.
    # Separate streams per split, so changing n_train does not change the test set.
    train_x, train_y = _split(n_train, size, 2 * seed)
    test_x, test_y = _split(n_test, size, 2 * seed + 1)
    return Splits(train_x, train_y, test_x, test_y, list(CLASSES))
