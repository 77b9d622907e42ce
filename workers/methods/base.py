"""The method registry and its metadata, kept apart from __init__ so the method modules import it without a cycle.

A method is `(model, meta, task, spec, device) -> TrainOutput` (`workers.train.Task`: the run's training subset,
test split and class names). A method that can train several runs in one pass of the frozen model also registers
a batched form in `BATCHED`: `(model, meta, tasks, specs, device) -> [TrainOutput or the run's exception]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from workers.core import schemas
from workers.core.registry import Registry


@dataclass(frozen=True)
class MethodMeta:
    kind: str  # "vp": prompt + label mapping, model frozen; "lp": linear head on frozen features; "ff": all weights
    # What is learnt in input space (the row's prompt_kind): "pad" (image shrunk into the canvas, sigmoid border
    # added before normalising), "full_canvas_additive" (image at full canvas, border added after normalising),
    # "token_patches" (a learnt patch per token id); None: no prompt.
    prompt: Optional[str] = None
    # True: images come at the model's own resolution through the model's own preprocessing (ModelMeta's
    # interpolation and crop_pct, from the original file), not at the dataset's/train.input_size side
    native_input: bool = False


METHODS = Registry("method", schemas.METHODS)  # one-line help: workers/core/schemas/methods.py
BATCHED = Registry("batched method")  # the methods whose runs can share one pass of the frozen model
