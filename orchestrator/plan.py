"""Pack runs into Ray Tune trials.

A trial costs ~2 s to start (0.1 s with reused actors) and few-shot runs take seconds, so runs that share
a model variant and dataset go into one trial: it loads, compresses and decodes once.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Optional

from orchestrator.grid import MATCH_AXES, Grid
from workers.spec import RunSpec


@dataclass(frozen=True)
class Trial:
    trial_id: str
    runs: tuple[RunSpec, ...]
    cpu: Optional[float]  # None: the model's registered default, not resolved (plan without the registries)
    gpu: Optional[float]


def _label(spec: RunSpec) -> str:
    level = spec.compression_level
    level = "" if level is None else f"{level:g}"
    return f"{spec.model}-{spec.compression}{level}-{spec.dataset}"


def pack(grid: Grid, runs: list[RunSpec], defaults: Optional[dict] = None) -> list[Trial]:
    """Group runs by model variant and dataset, deal each group round-robin into packs of <= pack_size.

    `defaults`: model name -> registered default resources {cpu, gpu}, for models the grid gives none."""
    groups: dict[tuple, list[RunSpec]] = defaultdict(list)
    for r in runs:
        groups[(r.variant_key, r.dataset, str(sorted(r.dataset_args.items())), r.train.input_size)].append(r)
    trials = []
    for members in groups.values():
        res = grid.resources_for(members[0].model, defaults)
        n = -(-len(members) // grid.pack_size)
        for i in range(n):
            chunk = tuple(members[i::n])  # round-robin: each pack gets a like mix of shots, so packs take alike time
            digest = hashlib.sha256("".join(r.run_key for r in chunk).encode()).hexdigest()[:8]
            trials.append(Trial(f"{_label(chunk[0])}-{digest}", chunk, res and res.cpu, res and res.gpu))
    return trials


def axis_value(spec: RunSpec, axis: str):
    if axis == "compression":
        level = spec.compression_level
        return spec.compression if level is None else f"{spec.compression}@{level:g}"
    if axis == "shots":
        return "full" if spec.shots is None else spec.shots
    return getattr(spec, axis)


BREAKDOWN_AXES = tuple(a for a in MATCH_AXES if a != "level")


def breakdown(runs: list[RunSpec]) -> dict[str, dict[str, int]]:
    """Runs per value of each axis, for `vpgrid plan`."""
    return {axis: {str(k): v for k, v in Counter(axis_value(r, axis) for r in runs).items()}
            for axis in BREAKDOWN_AXES}
