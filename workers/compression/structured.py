"""Structured channel pruning with torch-pruning: whole output channels (and what depends on them) are
removed, so the model really shrinks. The classifier's outputs are never pruned.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.compression.base import COMPRESSIONS

# The names are declared in workers/core/schemas/compressions.py (a test checks they agree).
_IMPORTANCE = {"l1": lambda tp: tp.importance.MagnitudeImportance(p=1),
               "l2": lambda tp: tp.importance.MagnitudeImportance(p=2),
               "random": lambda tp: tp.importance.RandomImportance()}


@COMPRESSIONS.register("channel")
def channel(model: nn.Module, calib: Tensor | None, ratio: float, importance: str, scope: str, seed: int) -> nn.Module:
    import torch_pruning as tp

    if calib is None:
        raise ValueError("compression 'channel': needs an example batch of model inputs (calib) to trace the graph")
    example = calib[:2]
    with torch.no_grad():
        out_dim = model(example).shape[-1]
    # the classifier's outputs are the source classes the label mapping needs: keep them all
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out_dim]
    torch.manual_seed(seed)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        for p in frozen:
            p.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(model, example, importance=_IMPORTANCE[importance](tp), pruning_ratio=ratio,
                                      global_pruning=scope == "global", ignored_layers=ignored)
        pruner.step()
    if frozen:
        model.requires_grad_(False)  # the pruner made new tensors; keep a frozen model frozen
    return model
