"""Method cards (the grid's `methods`): one per registered method, with its help, its arguments (none takes any
yet; the training recipe is `train`), what it learns and how it passes images through the model. The training
loops live in workers/methods/."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from workers.core.schema import Schema
from workers.core.schemas.mappings import MAPPINGS


@dataclass(frozen=True)
class Passes:
    """How a method passes images through the model: what `vpgrid plan --estimate` counts."""

    # "prompt": every epoch, forward + input-gradient backward of each training image through the frozen model;
    # "weights": forward + backward with weight gradients (FF: costs more than "prompt", counted at its rate);
    # "features": one no-grad forward of the training set, then a head trained on the features (LP)
    train: str
    # label-mapping remaps, each a no-grad forward of the training subset: "none", "once", "every_epoch"
    remap: str = "none"
    eval_every: bool = False  # the loop honours train.eval_every (a test-split forward every N epochs)


@dataclass(frozen=True, kw_only=True)
class MethodCard(Schema):
    """Help and arguments (the Schema), then the metadata."""

    kind: str  # "vp": prompt + label mapping, model frozen; "lp": linear head on frozen features; "ff": all weights
    passes: Passes
    # What is learnt in input space (the row's prompt_kind): "pad" (image shrunk into the canvas, sigmoid border
    # added before normalising), "full_canvas_additive" (image at full canvas, border added after normalising),
    # "token_patches" (a learnt patch per token id); None: no prompt.
    prompt: Optional[str] = None
    # True: images come at the model's own resolution through the model's own preprocessing (the model card's
    # interpolation and crop_pct, from the original file), not at the dataset's/train.input_size side
    native_input: bool = False


def _vp(help: str, mapping: str) -> MethodCard:
    """A pad prompt trained through the frozen model with label mapping `mapping` (workers/methods/vp.py)."""
    schedule = MAPPINGS[mapping].schedule
    return MethodCard(help, kind="vp", prompt="pad", passes=Passes(
        "prompt", "none" if schedule == "fixed" else schedule, eval_every=True))


METHODS = {
    "rlm": _vp("pad prompt, random label mapping fixed by the seed", "rlm"),
    "flm": _vp("pad prompt, frequency label mapping computed once", "flm"),
    "ilm": _vp("pad prompt, frequency label mapping recomputed every epoch", "ilm"),
    "ilm_hungarian": _vp("pad prompt, optimal label mapping recomputed every epoch", "ilm_hungarian"),
    "lp": MethodCard("linear probe: a new linear head on frozen features", kind="lp", passes=Passes("features")),
    "ff": MethodCard("full fine-tuning: every weight and a new head, pruned zeros kept", kind="ff",
                     passes=Passes("weights")),
    "clip_vp": MethodCard("CLIP: additive pad prompt, one text per class (Bahng et al.)", kind="clip_vp",
                          prompt="full_canvas_additive", native_input=True, passes=Passes("prompt")),
    "clip_ilm": MethodCard("CLIP: additive pad prompt, ILM over 81 templates x K", kind="clip_ilm",
                           prompt="full_canvas_additive", native_input=True, passes=Passes("prompt", "every_epoch")),
    "reprogram": MethodCard("cross-modal reprogramming: token embedding -> 16px patches, 10 source classes per class",
                            kind="crossmodal", prompt="token_patches", passes=Passes("prompt")),
}
