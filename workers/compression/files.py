"""Compressions that come as published checkpoints: the paper's GMP, lottery tickets, AC/DC, RigL, STR,
UPop and VVTQ models.

Nothing is applied here: the run loads the compressed weights from the entry's `checkpoint` (its format
tells the model family how to read it), and these entries validate the arguments and name the level on
the plots. A `checkpoint` is required: without one, "acdc" would silently mean the dense model.
"""
from __future__ import annotations

from torch import Tensor, nn

from workers.compression.base import COMPRESSIONS


def _from_checkpoint(model: nn.Module, calib: Tensor | None, **args) -> nn.Module:
    return model


for _name in ("gmp", "acdc", "rigl", "str", "lth", "upop", "vvtq"):
    COMPRESSIONS.register(_name)(_from_checkpoint)
