"""Transfer methods: the visual-prompting label mappings (rlm, flm, ilm, ...) and the classic baselines,
linear probing (lp) and full fine-tuning (ff). Each is `(model, meta, task, spec, device) -> TrainOutput`
(`workers.train.Task`: the run's training subset, test split and class names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from workers.mapping import LABEL_MAPPINGS
from workers import schemas
from workers.registry import Registry
from workers.train import train_prompt


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


METHODS = Registry("method", schemas.METHODS)  # one-line help: workers/schemas/methods.py

# Every label mapping is a VP method of the same name, trained by the one prompt loop.
for _name in LABEL_MAPPINGS.names():
    METHODS.register(_name, meta=MethodMeta("vp", prompt="pad"))(train_prompt)

from workers import baselines, clip_prompting, crossmodal  # noqa: E402,F401  (registers lp, ff, clip_*, reprogram)
