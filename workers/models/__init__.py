"""Model registry: each entry builds a frozen source classifier and declares its metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from workers.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelMeta:
    input_size: int  # side of the square canvas the prompt fills
    num_classes: int  # source classes the label mapping chooses from
    source: str  # what the source classes are
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})  # per trial, grid may override


@dataclass(frozen=True)
class Built:
    model: nn.Module
    weights_source: str  # provenance recorded in the row: file + sha256, "random (seed s)", ...


# builder(weights: str, args: dict, cache_dir: Path) -> Built
Builder = Callable[[str, dict, Path], Built]
MODELS: Registry[Builder] = Registry("model")


def build_model(name: str, weights: str, args: dict, cache_dir: Path) -> tuple[Built, ModelMeta]:
    entry = MODELS.entry(name)
    built = entry.obj(weights, dict(args), Path(cache_dir))
    built.model.eval().requires_grad_(False)  # frozen: VP trains only the prompt
    return built, entry.meta


from workers.models import demo_cnn  # noqa: E402,F401  (registers)
