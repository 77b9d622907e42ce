"""Readable names of source and target classes, without torch: the report (orchestrator) reads them to label
the label-mapping figure.

A model declares its source classes here by name of a class list (`SOURCE_CLASSES`); a method whose
`label_mapping` does not index source classes declares how to read it (`MAPPING_INDEX`). A test checks every
registered model's `ModelCard.num_classes` against its list, so the two cannot drift apart. Names the machine
does not have offline are reported as unavailable, never made up.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

# The demo's source task (workers/data/shapes.py renders them; its CLASSES must equal `shapes()`, tested).
SHAPE_NAMES = ("disc", "ring", "square", "frame", "diamond", "triangle", "plus", "x", "hbar", "vbar")
FAMILY_NAMES = ("warm", "cool")


def shapes() -> tuple[str, ...]:
    return tuple(f"{c}_{s}" for c in FAMILY_NAMES for s in SHAPE_NAMES)


@lru_cache(maxsize=1)
def imagenet() -> Optional[tuple[str, ...]]:
    """The 1000 ImageNet-1k class names in class-index order, as open_clip ships them (CLIP's cleaned names),
    read from its metadata file without importing open_clip (which imports torch). None when not installed."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    try:
        names: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), names)  # a plain module of tuples and lambdas
        out = tuple(names["IMAGENET_CLASSNAMES"])
    except (OSError, KeyError, SyntaxError):
        return None
    return out if len(out) == 1000 else None


CLASS_LISTS: dict[str, Callable[[], Optional[tuple[str, ...]]]] = {"shapes": shapes, "imagenet": imagenet}
# model -> the class list its classifier outputs; a model missing here gets its classes shown as numbers
SOURCE_CLASSES = {"demo_cnn": "shapes", "resnet18": "imagenet", "resnet34": "imagenet", "resnet50": "imagenet",
                  "deit_tiny": "imagenet", "swin_tiny": "imagenet", "clip_vit_b32": "imagenet",
                  "clip_vit_l14": "imagenet", "clip_vit_l14_336": "imagenet"}
# method -> what its label_mapping indexes when not the model's source classes (workers/clip_prompting.py):
# clip_ilm binds target class k to text row t * K + k' of 81 templates x K class names
MAPPING_INDEX = {"clip_ilm": "template_rows"}
# Target class names known without the dataset's files (others are shown by index)
TARGET_CLASSES = {"digits": tuple(str(i) for i in range(10)), "svhn": tuple(str(i) for i in range(10))}


def source_names(model: str) -> tuple[Optional[tuple[str, ...]], str]:
    """(names or None, why not) for `model`'s source classes."""
    kind = SOURCE_CLASSES.get(model)
    if kind is None:
        return None, f"source class names of {model!r} are not declared (workers/core/classnames.py)"
    names = CLASS_LISTS[kind]()
    if names is None:
        return None, f"{kind} class names are not available offline (open_clip not installed)"
    return names, ""


def mapped_name(model: str, method: str, dataset: str, index: int, num_target: int) -> str:
    """A readable name for source index `index` of a run's label mapping (`#index` when unknown)."""
    if MAPPING_INDEX.get(method) == "template_rows":
        t, k = divmod(int(index), max(num_target, 1))
        return f"template {t}: {target_name_or_index(k, dataset)}"
    names, _ = source_names(model)
    if names is not None and 0 <= index < len(names):
        return names[int(index)]
    return f"#{int(index)}"


def target_names(dataset: str) -> Optional[tuple[str, ...]]:
    return TARGET_CLASSES.get(dataset)


def target_name_or_index(k: int, dataset: Optional[str]) -> str:
    names = TARGET_CLASSES.get(dataset) if dataset else None
    return names[k] if names is not None and 0 <= k < len(names) else f"class {k}"


UPSTREAM_TASKS = {"imagenet": "ImageNet-1k val", "shapes": "shapes held-out split"}


def upstream_task(model: str) -> str:
    """The task `upstream_accuracy` is measured on for `model` (its source task), as the report names it."""
    return UPSTREAM_TASKS.get(SOURCE_CLASSES.get(model, ""), "source task")
