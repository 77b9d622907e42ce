"""Model registry: each entry builds a frozen source classifier; its card (help, arguments, metadata) is
declared in workers/core/schemas/models.py.

A builder is `(weights, args, cache_dir) -> Built`, where `weights` is "pretrained" (the family's
published weights, fetched into the cache and verified), "random" (recorded as such in the row), or a
`Checkpoint`: local files already resolved and verified, in a format the family knows how to map onto
its modules (each family file has its own `checkpoint_filter_fn`s).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from torch import nn

from workers.checkpoints import Checkpoint
from workers.core import schemas
from workers.core.registry import Registry
from workers.core.schema import check_args
from workers.core.schemas.models import ModelCard


Weights = Union[str, Checkpoint]


@dataclass(frozen=True)
class Built:
    model: nn.Module
    weights_source: str  # provenance recorded in the row: file + sha256, "random init ...", ...
    # A head computed from the model's own weights (CLIP's zero-shot head: the text tower over the class names),
    # which `build_model` fills unless told not to; None where the weights bring the head.
    fill_head: Callable[[], None] | None = None


Builder = Callable[[Weights, dict, Path], Built]
MODELS: Registry[Builder] = Registry("model", schemas.MODELS)


def build_model(name: str, weights: Weights, args: dict, cache_dir: Path,
                fill_head: bool = True) -> tuple[Built, ModelCard]:
    """The frozen source model. `fill_head=False` leaves a head computed from the model's weights at zeros: the model
    benchmarks time the forward, which is the same, without computing it (CLIP's takes hours on a few cores)."""
    entry = MODELS.entry(name)
    problems = check_args(entry.card, args)  # the builder sees only declared, valid args (no defaults filled)
    if problems:
        raise ValueError(f"model {name!r}: " + "; ".join(problems))
    if isinstance(weights, Checkpoint) and weights.format not in entry.card.formats:
        raise ValueError(f"model {name!r} cannot load checkpoint format {weights.format!r}; "
                         f"it loads: {', '.join(entry.card.formats)}")
    meta = entry.card
    if "input_size" in args:  # every model accepts a smaller canvas (CPU tests, small-input studies)
        meta = dataclasses.replace(meta, input_size=int(args["input_size"]))
    built = entry.obj(weights, dict(args), Path(cache_dir))
    if fill_head and built.fill_head is not None:
        built.fill_head()
    built.model.eval().requires_grad_(False)  # frozen: VP trains only the prompt
    return built, meta


def get_module(model: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        model = getattr(model, part)
    setattr(model, last, new)


from workers.models import demo_cnn  # noqa: E402,F401  (registers)
from workers.models import resnet  # noqa: E402,F401  (registers)
from workers.models import clip  # noqa: E402,F401  (registers)
from workers.models import vit  # noqa: E402,F401  (registers)
