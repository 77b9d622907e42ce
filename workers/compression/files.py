"""Compressions that come as published checkpoints: the paper's GMP, lottery tickets, AC/DC, RigL, STR,
UPop and VVTQ models.

Nothing is applied here: the run loads the compressed weights from the entry's `checkpoint` (its format
tells the model family how to read it), and these entries validate the arguments and name the level on
the plots. A `checkpoint` is required: without one, "acdc" would silently mean the dense model.
"""
from __future__ import annotations

from torch import Tensor, nn

from workers.compression.base import COMPRESSIONS, Arg, is_int, is_number

CHECKPOINT = Arg(lambda v: isinstance(v, (str, dict)), "a path, URL or {format, path|url, sha256, mask}")
SPARSITY = Arg(lambda v: is_number(v) and 0 <= v < 1, "the checkpoint's nominal sparsity in [0, 1)", None)


def _from_checkpoint(model: nn.Module, calib: Tensor | None, **args) -> nn.Module:
    return model


for _name, _doc in (("gmp", "gradual magnitude pruning"), ("acdc", "AC/DC"), ("rigl", "RigL"),
                    ("str", "soft threshold reparameterisation")):
    COMPRESSIONS.register(_name, meta={"checkpoint": CHECKPOINT, "sparsity": SPARSITY})(_from_checkpoint)

COMPRESSIONS.register("lth", meta={"checkpoint": CHECKPOINT, "sparsity": SPARSITY,
                                   "round": Arg(lambda v: is_int(v) and v >= 0, "the IMP round, an int >= 0", None)})(
    _from_checkpoint)
COMPRESSIONS.register("upop", meta={"checkpoint": CHECKPOINT,
                                    "ratio": Arg(lambda v: is_number(v) and v >= 1, "the compression ratio, e.g. 2 or 4", None)})(
    _from_checkpoint)
COMPRESSIONS.register("vvtq", meta={"checkpoint": CHECKPOINT,
                                    "bits": Arg(lambda v: v in (2, 3, 4), "2, 3 or 4 (32-bit is the float model)")})(
    _from_checkpoint)
