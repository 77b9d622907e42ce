"""Transfer methods: the visual-prompting label mappings (rlm, flm, ilm, ...) and the classic baselines,
linear probing (lp) and full fine-tuning (ff). Each is `(model, meta, task, spec, device) -> TrainOutput`
(`workers.train.Task`: the run's training subset, test split and class names).
"""
from __future__ import annotations

from dataclasses import dataclass

from workers.mapping import LABEL_MAPPINGS
from workers import schemas
from workers.registry import Registry
from workers.train import train_prompt


@dataclass(frozen=True)
class MethodMeta:
    kind: str  # "vp": prompt + label mapping, model frozen; "lp": linear head on frozen features; "ff": all weights


METHODS = Registry("method", schemas.METHODS)  # one-line help: workers/schemas/methods.py

# Every label mapping is a VP method of the same name, trained by the one prompt loop.
for _name in LABEL_MAPPINGS.names():
    METHODS.register(_name, meta=MethodMeta("vp"))(train_prompt)

from workers import baselines, clip_prompting, crossmodal  # noqa: E402,F401  (registers lp, ff, clip_*, reprogram)
