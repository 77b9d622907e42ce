"""Few-shot subsampling of a training split: `shots` examples per class, reproducible by seed."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def few_shot_indices(
    labels: Tensor | Sequence[int], shots: int | None, seed: int, *, cap: bool = False
) -> Tensor:
    """Indices of `shots` examples per class (all of them when `shots` is None), shuffled.

    One generator seeded by `seed` shuffles each class in sorted class order, so a class's
    permutation does not depend on `shots`: the k-shot subset is contained in the (k+1)-shot one.
    """
    y = torch.as_tensor(labels, dtype=torch.int64).flatten().cpu()
    g = torch.Generator().manual_seed(seed)
    if shots is None:
        return torch.randperm(len(y), generator=g)
    if shots < 1:
        raise ValueError(f"shots must be a positive int or None, got {shots!r}")
    picked = []
    for c in torch.unique(y).tolist():  # sorted, so the draw order is fixed
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if len(idx) < shots and not cap:
            raise ValueError(
                f"class {c} has only {len(idx)} samples but {shots} shots were asked "
                "(pass cap=True to take all it has)"
            )
        picked.append(idx[:shots])
    out = torch.cat(picked) if picked else torch.empty(0, dtype=torch.int64)
    return out[torch.randperm(len(out), generator=g)]
