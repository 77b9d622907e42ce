"""How each transfer method passes images through the model, torch-free: what `vpgrid plan --estimate` counts.

tests/test_estimate.py checks each entry against the method's registration (label-mapping schedules, kinds), so
this table cannot drift from the loops it describes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Passes:
    # "prompt": every epoch, forward + input-gradient backward of each training image through the frozen model;
    # "weights": forward + backward with weight gradients (FF: costs more than "prompt", counted at its rate);
    # "features": one no-grad forward of the training set, then a head trained on the features (LP)
    train: str
    # label-mapping remaps, each a no-grad forward of the training subset: "none", "once", "every_epoch"
    remap: str = "none"
    eval_every: bool = False  # the loop honours train.eval_every (a test-split forward every N epochs)


PASSES = {
    "rlm": Passes("prompt", "none", True),
    "flm": Passes("prompt", "once", True),
    "ilm": Passes("prompt", "every_epoch", True),
    "ilm_hungarian": Passes("prompt", "every_epoch", True),
    "clip_vp": Passes("prompt"),
    "clip_ilm": Passes("prompt", "every_epoch"),
    "reprogram": Passes("prompt"),
    "lp": Passes("features"),
    "ff": Passes("weights"),
}
