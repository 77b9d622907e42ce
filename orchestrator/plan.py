"""Pack runs into Ray Tune trials.

A trial costs ~2 s to start (0.1 s with reused actors) and few-shot runs take seconds, so runs that share
a model variant and dataset go into one trial: it loads, compresses and decodes once. Within that, the runs of
one cell (one shots and training config: the seeds x label mappings) stay in one trial, where the worker trains
them together in one pass of the frozen model (workers.run.batches).
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Hashable, Optional

from orchestrator.grid import MATCH_AXES, Grid
from workers.core.spec import RunSpec, variant_tag


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


def _split(runs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """Even consecutive chunks of at most `size`."""
    n = -(-len(runs) // size)
    return [runs[len(runs) * i // n:len(runs) * (i + 1) // n] for i in range(n)]


def _cost(runs: tuple[RunSpec, ...]) -> float:
    """A rough size of a pack, to start the largest first: epochs x training images (the full split as 1000 a
    class). Only the order of trials depends on it."""
    return sum(r.train.epochs * (1000 if r.shots is None else r.shots) for r in runs)


def pack(grid: Grid, runs: list[RunSpec], defaults: Optional[dict] = None) -> list[Trial]:
    """Group runs by model variant and dataset, and fill packs of <= pack_size with whole cells (a cell larger
    than pack_size in even pieces), each into the least-filled pack it fits, so packs stay alike in size.
    Trials come largest first, so the long ones do not start last.

    `defaults`: model name -> registered default resources {cpu, gpu}, for models the grid gives none."""
    groups: dict[tuple, dict[tuple, list[RunSpec]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        group = (*r.cell_key[:3], r.train.input_size)  # variant, dataset and its args; one image size
        groups[group][r.cell_key].append(r)
    trials = []
    for cells in groups.values():
        pieces = [p for members in cells.values() for p in _split(members, grid.pack_size)]
        packs: list[list[RunSpec]] = [[] for _ in range(-(-sum(map(len, pieces)) // grid.pack_size))]
        for piece in sorted(pieces, key=len, reverse=True):  # stable: cells keep their grid order among equals
            fits = [p for p in packs if len(p) + len(piece) <= grid.pack_size]
            if not fits:
                packs.append([])
                fits = packs[-1:]
            min(fits, key=len).extend(piece)
        first = next(iter(cells.values()))[0]
        res = grid.resources_for(first.model, defaults)
        for chunk in map(tuple, filter(None, packs)):
            digest = hashlib.sha256("".join(r.run_key for r in chunk).encode()).hexdigest()[:8]
            trials.append(Trial(f"{_label(chunk[0])}-{digest}", chunk, res and res.cpu, res and res.gpu))
    return sorted(trials, key=lambda t: -_cost(t.runs))


def axis_value(spec: RunSpec, axis: str):
    if axis == "compression":
        return variant_tag(spec.compression, spec.compression_level)
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
        return variant_tag(*raw)
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
