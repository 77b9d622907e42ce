"""Pack runs into Ray Tune trials.

A trial costs ~2 s to start (0.1 s with reused actors) and few-shot runs take seconds, so runs that share
a model variant and dataset go into one trial: it loads, compresses and decodes once.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Hashable, Optional

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


def _raw(axis: str) -> Callable[[RunSpec], Hashable]:
    """What `axis_value` is made from, fetched without a Python call per run where possible."""
    if axis == "compression":
        return lambda r: (r.compression, r.compression_level)
    return attrgetter(axis)


def _axis_label(axis: str, raw: Hashable) -> str:
    """str(axis_value(...)) from the raw value: computed once per distinct value, not once per run."""
    if axis == "compression":
        name, level = raw
        return name if level is None else f"{name}@{level:g}"
    if axis == "shots":
        return "full" if raw is None else str(raw)
    return str(raw)


def breakdown(runs: list[RunSpec]) -> dict[str, dict[str, int]]:
    """Runs per value of each axis, for `vpgrid plan`; values in order of first appearance."""
    out: dict[str, dict[str, int]] = {}
    for axis in BREAKDOWN_AXES:
        per: dict[str, int] = {}
        for raw, n in Counter(map(_raw(axis), runs)).items():
            label = _axis_label(axis, raw)
            per[label] = per.get(label, 0) + n
        out[axis] = per
    return out


def breakdown_by_state(runs: list[RunSpec], states: list[str],
                       names: tuple[str, ...] = ("done", "failed", "pending")) -> dict[str, dict[str, dict[str, int]]]:
    """Runs per value of each axis and state (`states[i]` is the state of `runs[i]`), for `vpgrid status`.
    Counts (value, state) pairs in C, then labels each distinct value once."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for axis in BREAKDOWN_AXES:
        per: dict[str, dict[str, int]] = {}
        for (raw, state), n in Counter(zip(map(_raw(axis), runs), states)).items():
            label = _axis_label(axis, raw)
            if label not in per:
                per[label] = dict.fromkeys(names, 0)
            per[label][state] += n
        out[axis] = per
    return out
