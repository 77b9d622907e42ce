"""Source->target label mappings for visual prompting: random (RLM), frequency (FLM) and iterative (ILM).

A mapping is a LongTensor `m` of shape (K,): target class t reads the source logit m[t]. Mappings are
injective (distinct source classes), so S >= K is required.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from workers.core import schemas
from workers.core.registry import Registry


def _check_sizes(num_source: int, num_target: int) -> None:
    if num_source < num_target:
        raise ValueError(f"need at least as many source classes ({num_source}) as target classes ({num_target})")


def frequency_matrix(source_pred: Tensor, targets: Tensor, num_source: int, num_target: int) -> Tensor:
    """counts[s, t] = number of samples of target class t whose source-model argmax is s."""
    source_pred, targets = source_pred.reshape(-1).long().cpu(), targets.reshape(-1).long().cpu()
    if source_pred.numel() != targets.numel():
        raise ValueError(f"{source_pred.numel()} source predictions but {targets.numel()} targets")
    if source_pred.numel() and not (0 <= int(source_pred.min()) and int(source_pred.max()) < num_source):
        raise ValueError(f"source predictions outside [0, {num_source})")
    if targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < num_target):
        raise ValueError(f"targets outside [0, {num_target})")
    flat = torch.bincount(source_pred * num_target + targets, minlength=num_source * num_target)
    return flat.view(num_source, num_target)


def _working_copy(counts: Tensor) -> np.ndarray:
    """A float64 numpy copy of a 2-D count matrix with S >= K, so the caller's tensor is never modified."""
    work = torch.as_tensor(counts).detach().cpu().to(torch.float64).numpy().copy()
    if work.ndim != 2:
        raise ValueError(f"counts must be 2-D, got shape {work.shape}")
    _check_sizes(*work.shape)
    return work


def greedy_mapping(counts: Tensor) -> Tensor:
    """The reference greedy rule: K times, bind the global argmax (s, t) and strike out row s and column t.

    Ties go to the first entry in row-major order (lowest source, then lowest target). A target with no
    samples (all-zero column) still gets a distinct source: the lowest free row, by the same tie rule.
    """
    work = _working_copy(counts)
    num_source, num_target = work.shape
    if (work < 0).any():
        raise ValueError("counts must be non-negative (struck-out entries are marked with -1)")
    mapping = torch.empty(num_target, dtype=torch.long)
    for _ in range(num_target):
        s, t = divmod(int(np.argmax(work)), num_target)  # np.argmax returns the first maximum
        mapping[t] = s
        work[s, :] = -1
        work[:, t] = -1
    return mapping


def hungarian_mapping(counts: Tensor) -> Tensor:
    """The injective mapping maximising the total count (optimal, unlike greedy)."""
    work = _working_copy(counts)
    rows, cols = linear_sum_assignment(work, maximize=True)
    mapping = torch.empty(work.shape[1], dtype=torch.long)
    mapping[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.long)
    return mapping


def random_mapping(num_source: int, num_target: int, seed: int) -> Tensor:
    """A seeded random injection, independent of the global RNG."""
    _check_sizes(num_source, num_target)
    return torch.randperm(num_source, generator=torch.Generator().manual_seed(seed))[:num_target]


def map_logits(source_logits: Tensor, mapping: Tensor) -> Tensor:
    """(B, S) source logits -> (B, K) target logits."""
    return source_logits[:, mapping.to(source_logits.device)]


LABEL_MAPPINGS: Registry[Callable[..., Tensor]] = Registry("label mapping", schemas.MAPPINGS)


def compute_mapping(
    name: str,
    *,
    source_pred: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    num_source: int,
    num_target: int,
    seed: int,
) -> Tensor:
    """The mapping of label mapping `name`, by its builder; when to compute it is its card's `schedule`
    (workers/core/schemas/mappings.py)."""
    return LABEL_MAPPINGS.get(name)(source_pred=source_pred, targets=targets, num_source=num_source,
                                    num_target=num_target, seed=seed)


@LABEL_MAPPINGS.register("rlm")
def rlm(*, num_source: int, num_target: int, seed: int, **_) -> Tensor:
    """Random label mapping, fixed for the whole run (schedule "fixed": from the seed, no data)."""
    return random_mapping(num_source, num_target, seed)


def _by_frequency(name: str, assign: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """The builder of a mapping that `assign`s from the frequency matrix of the source model's predictions."""

    def build(*, source_pred: Optional[Tensor] = None, targets: Optional[Tensor] = None, num_source: int,
              num_target: int, **_) -> Tensor:
        if source_pred is None or targets is None:
            raise ValueError(f"label mapping {name!r} needs source_pred and targets")
        return assign(frequency_matrix(source_pred, targets, num_source, num_target))

    return build


# FLM (once, with the initial prompt) and ILM (the ILM-VP recipe: every epoch) assign greedily, ILM-Hungarian
# optimally; their cards say when.
for _name, _assign in (("flm", greedy_mapping), ("ilm", greedy_mapping), ("ilm_hungarian", hungarian_mapping)):
    LABEL_MAPPINGS.register(_name)(_by_frequency(_name, _assign))
