"""Check a parsed grid's names and arguments against the cards (workers/core/schemas/), before anything runs.

Torch-free (reads the cards only), so `vpgrid plan` validates as fully as `vpgrid launch`. Every
message names the grid file and the field path, e.g.
`grid.yaml: models.0.compressions.1: sparsity 1.5 is out of range [0, 1)`.
"""
from __future__ import annotations

from orchestrator.grid import Grid, GridError
from workers.core.schema import check_args, check_checkpoint, did_you_mean
from workers.core.schemas import CARDS
from workers.core.schemas.models import cannot_load, default_resources


def _name(kind: str, name: str) -> list[str]:
    table = CARDS[kind]
    if name in table:
        return []
    return [f"unknown {kind} {name!r}{did_you_mean(name, table)} (valid: {', '.join(sorted(table))}; "
            f"`vpgrid list {kind}s` shows them)"]


def problems(grid: Grid) -> list[str]:
    """Every problem as 'field.path: message'."""
    out: list[str] = []
    parts = [(f"studies.{i}.", st) for i, st in enumerate(grid.studies)] or [("", grid)]
    for prefix, part in parts:
        for i, m in enumerate(part.models):
            at = f"{prefix}models.{i}"
            out += [f"{at}: {p}" for p in _name("model", m.name)]
            out += [f"{at}: {p}" for p in check_checkpoint(m.weights, "weights")]
            if m.name in CARDS["model"]:
                out += [f"{at}.args: {p}" for p in check_args(CARDS["model"][m.name], m.args)]
            for j, c in enumerate(m.compressions):
                out += _compression(f"{at}.compressions.{j}", c)
        for i, method in enumerate(part.methods):
            out += [f"{prefix}methods.{i}: {p}" for p in _name("method", method)]
        for i, d in enumerate(part.datasets):
            name, args = (d, {}) if isinstance(d, str) else (d.name, d.args)
            out += [f"{prefix}datasets.{i}: {p}" for p in _name("dataset", name)]
            if name in CARDS["dataset"]:
                out += [f"{prefix}datasets.{i}.args: {p}" for p in check_args(CARDS["dataset"][name], args)]
    return list(dict.fromkeys(out))  # list-valued args give one message per variant; say each once


def _compression(at: str, c) -> list[str]:
    method = c if isinstance(c, str) else c.method
    found = _name("compression", method)
    if found:
        return [f"{at}: {p}" for p in found]
    if isinstance(c, str):
        return [f"{at}: {p}" for p in check_args(CARDS["compression"][method], {})]
    try:
        variants = c.variants()
    except ValueError as e:  # a {placeholder} in the checkpoint path that names no arg
        return [f"{at}: {e}"]
    out = []
    for _, args in variants:
        out += [f"{at}: {p}" for p in check_args(CARDS["compression"][method], args)]
    return out


def check_runs(runs, source: str) -> dict[str, dict]:
    """What the grid's names and arguments cannot show, from the expanded runs: each model must read the checkpoint
    format its weights need. Returns the models' default per-trial resources (their cards), for the packing."""
    found = list(dict.fromkeys(why for r in runs if (why := cannot_load(r))))
    if found:
        raise GridError(f"{source}: " + "; ".join(found))
    return default_resources({r.model for r in runs})


def check_grid(grid: Grid, source: str) -> None:
    """Raise GridError with one line per problem, each naming the file and the field."""
    found = problems(grid)
    if found:
        raise GridError("\n".join(f"{source}: {p}" for p in found))
