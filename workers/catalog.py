"""Every registry in one place, so the launcher can check a grid's names before running anything."""
from __future__ import annotations

from workers.compression import COMPRESSIONS
from workers.data import DATASETS
from workers.methods import METHODS
from workers.models import MODELS
from workers.registry import UnknownName
from workers.spec import RunSpec

REGISTRIES = {"model": MODELS, "compression": COMPRESSIONS, "dataset": DATASETS, "method": METHODS}


def check(runs: list[RunSpec]) -> list[str]:
    """One message per unknown name (field, value, what is valid)."""
    problems: dict[tuple[str, str], str] = {}
    for r in runs:
        for field, reg in REGISTRIES.items():
            name = getattr(r, field)
            if (field, name) not in problems and name not in reg:
                try:
                    reg.entry(name)
                except UnknownName as e:
                    problems[(field, name)] = f"{field}: {e}"
    return list(problems.values())


def default_resources(models: set[str]) -> dict[str, dict]:
    """Each registered model's default per-trial resources ({cpu, gpu})."""
    return {m: dict(MODELS.meta(m).resources) for m in models if m in MODELS}
