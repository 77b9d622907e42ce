"""Every registry in one place, so the launcher can check a grid's names, and which checkpoint formats each
model reads, before running anything (arguments are checked torch-free by orchestrator.validate)."""
from __future__ import annotations

from workers.compression import COMPRESSIONS
from workers.data import DATASETS
from workers.methods import METHODS
from workers.models import MODELS
from workers.core.registry import UnknownName
from workers.core.spec import RunSpec

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
        fmt = _format(r.compression_args.get("checkpoint", r.weights))
        if r.model in MODELS and fmt and fmt not in MODELS.meta(r.model).formats:
            problems[("format", r.model, fmt)] = (f"model {r.model!r} cannot load checkpoint format {fmt!r} "
                                                  f"(it loads: {', '.join(MODELS.meta(r.model).formats)})")
    return list(problems.values())


def _format(weights) -> str | None:
    """The checkpoint format a run's weights need, None for 'pretrained'/'random'."""
    if isinstance(weights, dict):
        return weights.get("format", "state_dict")
    return None if weights in ("pretrained", "random") else "state_dict"


def default_resources(models: set[str]) -> dict[str, dict]:
    """Each registered model's default per-trial resources ({cpu, gpu})."""
    return {m: dict(MODELS.meta(m).resources) for m in models if m in MODELS}
