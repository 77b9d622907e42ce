"""The run table: every run of the grid and every stored row in one frame, one row per run with its state (ok,
failed, pending), named once (variant, budget, level, settings as text) for every table and figure of the report;
and `--select`, which narrows it with the grid's `match` semantics. pandas only, no torch, no matplotlib.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Optional

import pandas as pd

from orchestrator.grid import MATCH_AXES
from orchestrator.report.names import LEVEL_KEYS, METRIC_INFO, SETTINGS, budget_text, setting_text, variant_text
from workers.core.errors import UsageError


class SelectError(UsageError, ValueError):
    """A `--select` item that is malformed, names an unknown key, or selects no run (a usage error)."""


def _level_key(compression: str, args: Any) -> str:
    if compression == "dense" or not isinstance(args, str):
        return ""
    try:
        d = json.loads(args)
    except ValueError:
        return ""
    return next((k for k in LEVEL_KEYS if k in d), "") if isinstance(d, dict) else ""


def run_table(stored: pd.DataFrame, specs: Iterable = (), study_of: Optional[dict] = None) -> pd.DataFrame:
    """One row per run: every stored row (state = its status) and every grid run the store lacks (state
    'pending', metrics null), with `in_grid`, `study`, `budget`, `variant`, `level_key`, `rank` (0 = dense, then
    each level of the model's compression from least to most compressed), the SETTINGS as text, and `setup`:
    the settings that tell configurations of one cell apart (as `vpgrid report`: a setting that only follows
    the budget, such as the batch size per shots, does not)."""
    from workers.core.spec import RunResult

    study_of = study_of or {}
    specs = list(specs)
    df = stored.copy() if len(stored) else pd.DataFrame(columns=["run_key", "status"])
    have = set(df["run_key"])
    pending = [RunResult.for_spec(s, "pending").to_row() for s in specs if s.run_key not in have]
    if pending:
        df = pd.concat([df, pd.DataFrame(pending)], ignore_index=True) if len(df) else pd.DataFrame(pending)
    if df.empty:
        return df.assign(state=[], in_grid=[], study=[])
    df["state"] = df["status"]
    order = {s.run_key: i for i, s in enumerate(specs)}  # the grid's order: models, compressions as written
    df["in_grid"] = df["run_key"].isin(order.keys()) if specs else True
    df = df.iloc[df["run_key"].map(order).fillna(len(order)).argsort(kind="stable")].reset_index(drop=True)
    df["study"] = df["run_key"].map(study_of).fillna("") if study_of else ""
    for c in (*METRIC_INFO, "upstream_accuracy", "params", "sparsity", "weight_bits"):  # all-null reads as objects
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else math.nan
    # target classes: the length of a run's per-class accuracy (the chance line of accuracy axes is 1 / classes)
    df["classes"] = df["per_class_accuracy"].map(lambda v: len(v) if is_list(v) else math.nan) \
        if "per_class_accuracy" in df else math.nan
    df["best_epoch_accuracy"] = df["epoch_accuracy"].map(lambda v: max(v) if is_list(v) else math.nan) \
        if "epoch_accuracy" in df else math.nan
    df["level"] = pd.to_numeric(df["compression_level"], errors="coerce")
    df["shots"] = pd.to_numeric(df["shots"], errors="coerce")
    df["budget"] = df["shots"].map(budget_text)
    df["budget_rank"] = df["shots"].fillna(math.inf)
    pairs = df[["compression", "compression_args"]].drop_duplicates()
    lk = {(c, a): _level_key(c, a) for c, a in zip(pairs["compression"], pairs["compression_args"])}
    df["level_key"] = [lk[(c, a)] for c, a in zip(df["compression"], df["compression_args"])]
    df["variant"] = [variant_text(c, l) for c, l in zip(df["compression"], df["level"])]
    for c in SETTINGS:  # an old store may lack a column: one value, ""
        df[c] = df[c].map(setting_text) if c in df else ""
    df["setup"] = _setups(df)
    df["rank"] = _ranks(df)
    return df.reset_index(drop=True)


def is_list(v) -> bool:
    """A non-empty list cell (a list column reads as arrays; null as None or NaN)."""
    return v is not None and not isinstance(v, (float, str)) and len(v) > 0


def _setups(df: pd.DataFrame) -> pd.Series:
    """Per row, 'name=value ...' of the settings that differ within one (study, model, compression, level,
    method, dataset, shots) cell somewhere in that model's rows; '' when none do."""
    out = pd.Series("", index=df.index)
    cell = ["study", "compression", "level", "method", "dataset", "shots"]
    for model, g in df.groupby("model", sort=False):
        cells = g.groupby(cell, dropna=False, sort=False)
        varying = [c for c in SETTINGS if (cells[c].nunique(dropna=False) > 1).any()]
        if varying:
            out[g.index] = g[varying].apply(lambda r: " ".join(f"{c}={r[c] or '-'}" for c in varying), axis=1)
    return out


def _ranks(df: pd.DataFrame) -> pd.Series:
    """0 for dense; 1, 2, ... for a compression's levels from least to most compressed (bits descending)."""
    rank = pd.Series(0, index=df.index, dtype="int64")
    comp = df[df["compression"] != "dense"]
    for (model, c), g in comp.groupby(["model", "compression"], sort=False):
        levels = sorted(g["level"].dropna().unique(), reverse=LEVEL_KEYS.get(g["level_key"].iloc[0], False))
        pos = {v: i + 1 for i, v in enumerate(levels)}
        rank[g.index] = [pos.get(v, 1) for v in g["level"]]
    return rank


def axis_value(axis: str, v: Any) -> Any:
    """A run table value as grid `match` sees it: shots 'full' for the full split, level None for none."""
    if isinstance(v, float) and math.isnan(v):
        return "full" if axis == "shots" else None
    if axis in ("shots", "seed"):
        return int(v)
    return v


def select(runs: pd.DataFrame, wanted: dict[str, list]) -> pd.DataFrame:
    """The rows whose every axis in `wanted` has one of its values (grid `match` semantics: values of one key
    are alternatives, keys must all hold)."""
    keep = pd.Series(True, index=runs.index)
    for axis, values in wanted.items():
        col = runs[axis].map(lambda v: axis_value(axis, v))
        keep &= col.map(lambda v: v in values)
    return runs[keep]


def parse_select(items: Iterable[str]) -> dict[str, list]:
    """['model=resnet50', 'level=0.9', 'level=0.8'] -> {'model': ['resnet50'], 'level': [0.9, 0.8]}; values
    read as YAML scalars, as in a grid file. SelectError names a malformed item or an unknown key."""
    import difflib

    import yaml

    out: dict[str, list] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise SelectError(f"--select {item!r}: expected KEY=VALUE with KEY one of {', '.join(MATCH_AXES)}")
        if key not in MATCH_AXES:
            close = difflib.get_close_matches(key, MATCH_AXES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SelectError(f"--select: unknown key {key!r}{hint} (valid: {', '.join(MATCH_AXES)})")
        try:
            v = yaml.safe_load(value)
        except yaml.YAMLError:
            v = value
        out.setdefault(key, []).append(v if isinstance(v, (str, int, float, bool)) or v is None else value)
    return out


