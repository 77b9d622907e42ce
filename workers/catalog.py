"""Every registry in one place, so the launcher can check a grid's names, and which checkpoint formats each
model reads, before running anything (arguments are checked torch-free by orchestrator.validate)."""
from __future__ import annotations

from workers.compression import COMPRESSIONS
from workers.data import DATASETS
from workers.methods import METHODS
from workers.models import MODELS
from workers.core.registry import UnknownName
from workers.core.schemas.models import cannot_load, default_resources  # noqa: F401  (the launch reads it here)
from workers.core.spec import RunSpec

REGISTRIES = {"model": MODELS, "compression": COMPRESSIONS, "dataset": DATASETS, "method": METHODS}


def check(runs: list[RunSpec]) -> list[str]:
    """One message per unknown name (field, value, what is valid) or checkpoint format a model cannot read."""
    problems: dict[tuple[str, str], str] = {}
    for r in runs:
        for field, reg in REGISTRIES.items():
            name = getattr(r, field)
            if (field, name) not in problems and name not in reg:
                try:
                    reg.entry(name)
                except UnknownName as e:
                    problems[(field, name)] = f"{field}: {e}"
        if r.model in MODELS and (why := cannot_load(r)):
            problems[("format", why)] = why
    return list(problems.values())
