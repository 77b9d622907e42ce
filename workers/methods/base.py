"""The method registry, kept apart from __init__ so the method modules import it without a cycle. Each method's
card (help, arguments, kind, prompt, passes) is declared in workers/core/schemas/methods.py.

A method is `(model, meta, task, spec, device) -> TrainOutput` (`workers.train.Task`: the run's training subset,
test split and class names). A method that can train several runs in one pass of the frozen model also registers
a batched form in `BATCHED`: `(model, meta, tasks, specs, device) -> [TrainOutput or the run's exception]`.
"""
from __future__ import annotations

from workers.core import schemas
from workers.core.registry import Registry

METHODS = Registry("method", schemas.METHODS)
BATCHED = Registry("batched method")  # the methods whose runs can share one pass of the frozen model
