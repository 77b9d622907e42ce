"""Unstructured one-shot pruning: magnitude (global or per layer) and random.

Weights are zeroed directly rather than through torch.nn.utils.prune, so no masks or hooks stay
behind and a state_dict keeps its plain keys.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.compression.base import COMPRESSIONS, compression_targets


def _zero_flat(weights: list[Tensor], drop: Tensor) -> None:
    """Zero the positions `drop` (indices or a boolean mask) of the weights taken as one flat vector (in layer
    order)."""
    mask = torch.ones(sum(w.numel() for w in weights), dtype=torch.bool)
    mask[drop] = False
    start = 0
    for w in weights:
        n = w.numel()
        w.masked_fill_(~mask[start : start + n].view_as(w).to(w.device), 0)
        start += n


def _smallest(scores: Tensor, k: int) -> Tensor:
    """A mask of the k smallest scores, ties broken by position: the first k of a stable sort, so the same weights
    go whatever the device or run. Found by selection, not by sorting: a ViT-B/32's 88M weights took 12 s to sort
    on one CPU core, 2.5 s this way."""
    n = scores.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool)
    t = torch.kthvalue(scores, k).values  # the k-th smallest: all below it go, then the first of its equals
    drop = scores < t
    drop[(scores == t).nonzero().flatten()[: k - int(drop.sum())]] = True
    return drop


@COMPRESSIONS.register("magnitude")
@torch.no_grad()
def magnitude(model: nn.Module, calib: Tensor | None, sparsity: float, scope: str) -> nn.Module:
    weights = [t.weight for t in compression_targets(model)]
    if scope == "global":
        # One threshold over all layers: small layers may end up far sparser than big ones.
        scores = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
        _zero_flat(weights, _smallest(scores, round(sparsity * scores.numel())))
    else:
        for w in weights:
            scores = w.detach().abs().flatten().float().cpu()
            _zero_flat([w], _smallest(scores, round(sparsity * scores.numel())))
    return model


@COMPRESSIONS.register("random")
@torch.no_grad()
def random_prune(model: nn.Module, calib: Tensor | None, sparsity: float, seed: int) -> nn.Module:
    weights = [t.weight for t in compression_targets(model)]
    total = sum(w.numel() for w in weights)
    # CPU generator: the same seed prunes the same weights on any device.
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    _zero_flat(weights, perm[: round(sparsity * total)])
    return model
