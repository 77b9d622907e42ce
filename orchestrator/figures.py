"""The report's data: tidy frames aggregated from the store, which the plotting layer (orchestrator.plots) only
draws. pandas only, no torch, no matplotlib.

`run_table` puts every run of the grid and every stored row in one frame with its state (ok, failed, pending);
`summarize` turns its ok rows into mean, std and count over seeds per configuration and metric (every scalar
figure and table reads it); `reliability` pools the stored calibration bins over seeds; `label_maps` takes the
label mapping each configuration agreed on over its seeds. Figures and tables are planned from the axes found
in these frames (`plan`), never from a list of the paper's models.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from orchestrator.grid import MATCH_AXES
from orchestrator.report import KEYS, SETTINGS, _setting_text
from workers.core.errors import UsageError
from workers.core.spec import AXES

# A compression's level is the first of these keys in its args (as RunSpec.compression_level); `True`: a
# smaller value compresses more (bits), so the order dense -> most compressed is descending.
LEVEL_KEYS = {"sparsity": False, "bits": True, "ratio": False, "round": False}
LEVEL_NAMES = {"sparsity": "sparsity (% of conv/linear weights zeroed)", "bits": "weight bits",
               "ratio": "compression ratio (×)", "round": "IMP round (sparsity 1 − 0.8^round)"}
LEVEL_SHORT = {"sparsity": "sparsity", "bits": "weight bits", "ratio": "compression ratio", "round": "IMP round"}
# Scalar metrics: axis label, the factor that turns the stored value into that unit, and what it measures.
METRIC_INFO = {
    "accuracy": ("test accuracy (%)", 100.0, "top-1 accuracy on the target test split"),
    "ece": ("ECE (%)", 100.0, "expected calibration error, 15 equal-width bins of the top probability"),
    "ece_paper": ("ECE, paper's code (logit units / batch)", 1.0,
                  "the paper code's ECE (per-batch package ECE on logits, / N); not a probability error"),
    "conf_correct": ("mean confidence of the true class (%)", 100.0,
                     "mean probability of the true class over correctly classified test images"),
    "kl_incorrect": ("KL(p ‖ uniform) on errors (nats)", 1.0,
                     "mean KL divergence of the prediction to the uniform distribution over misclassified test images"),
    "kl_incorrect_paper": ("paper's KL(U ‖ p)/K on errors (nats)", 1.0,
                           "the paper code's F.kl_div(log p, U, 'mean') over misclassified test images"),
}
AXIS_COLUMNS = list(AXES)


class SelectError(UsageError, ValueError):
    """A `--select` item that is malformed, names an unknown key, or selects no run (a usage error)."""


# ------------------------------------------------------------------------------------------- the run table

def _level_key(compression: str, args: Any) -> str:
    if compression == "dense" or not isinstance(args, str):
        return ""
    try:
        d = json.loads(args)
    except ValueError:
        return ""
    return next((k for k in LEVEL_KEYS if k in d), "") if isinstance(d, dict) else ""


def budget_text(shots: Any) -> str:
    return "full" if shots is None or (isinstance(shots, float) and math.isnan(shots)) else f"{int(shots)}-shot"


def variant_text(compression: str, level: Any) -> str:
    if compression == "dense":
        return "dense"
    return compression if level is None or (isinstance(level, float) and math.isnan(level)) else f"{compression} {level:g}"


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
    df["classes"] = df["per_class_accuracy"].map(lambda v: len(v) if _is_list(v) else math.nan) \
        if "per_class_accuracy" in df else math.nan
    df["best_epoch_accuracy"] = df["epoch_accuracy"].map(lambda v: max(v) if _is_list(v) else math.nan) \
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
        df[c] = df[c].map(_setting_text) if c in df else ""
    df["setup"] = _setups(df)
    df["rank"] = _ranks(df)
    return df.reset_index(drop=True)


def _is_list(v) -> bool:
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


# ------------------------------------------------------------------------------------------- aggregation

def summarize(runs: pd.DataFrame, metrics: Iterable[str] = tuple(METRIC_INFO)) -> pd.DataFrame:
    """Long and tidy: one row per (configuration, metric) over the ok runs, where a configuration is KEYS
    (seeds apart). Columns: KEYS, level_key, variant, rank, budget, budget_rank, metric, n (seeds with a
    value), mean, std (ddof 1; NaN for one seed), lo and hi (the 95% interval of the mean: Student t, a
    bootstrap with >= 5 seeds, NaN for one), seeds ('1,2,3'), upstream_accuracy, params, sparsity, weight_bits.
    Failed and pending runs are never in it."""
    cols = KEYS + ["level_key", "variant", "rank", "budget", "budget_rank", "metric", "n", "mean", "std", "lo", "hi",
                   "seeds", "upstream_accuracy", "params", "sparsity", "weight_bits"]
    ok = runs[runs["state"] == "ok"] if len(runs) else runs
    if ok.empty:
        return pd.DataFrame(columns=cols)
    cfg = ok.groupby(KEYS, dropna=False, sort=False).ngroup()  # NaN keys (full shots, no level) group too
    g = ok.groupby(cfg)
    base = g[KEYS + ["level_key", "variant", "rank", "budget", "budget_rank"]].first()
    base["upstream_accuracy"] = g["upstream_accuracy"].first() if "upstream_accuracy" in ok else math.nan
    for c in ("params", "sparsity", "weight_bits"):
        base[c] = g[c].mean() if c in ok else math.nan
    parts = []
    for m in metrics:
        vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else pd.Series(math.nan, index=ok.index)
        by = vals.groupby(cfg)
        has = vals.notna()
        seeds = (ok["seed"][has].astype(int).groupby(cfg[has]).agg(lambda s: ",".join(map(str, sorted(s))))
                 if has.any() else pd.Series(dtype=object))
        part = base.assign(metric=m, n=by.count(), mean=by.mean(), std=by.std(ddof=1), seeds=seeds.reindex(base.index))
        part["lo"], part["hi"] = _mean_interval(part, vals, cfg)
        parts.append(part[part["n"] > 0])
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype(int)
    # the grid's order (models, datasets, methods as written), then dense -> most compressed, budgets ascending
    order = {c: {v: i for i, v in enumerate(pd.unique(ok[c]))} for c in ("study", "model", "setup", "dataset", "method")}
    keys = [out[c].map(order[c]).to_numpy() for c in order] + [out["rank"].to_numpy(), out["budget_rank"].to_numpy()]
    out = out.iloc[np.lexsort(keys[::-1])]  # lexsort: the last key is the primary one
    return out[cols].reset_index(drop=True)


def _mean_interval(part: pd.DataFrame, vals: pd.Series, cfg: pd.Series) -> tuple:
    """(lo, hi) of the 95% interval of each configuration's mean (orchestrator.cost.interval: t for 2-4 seeds,
    vectorised here; a bootstrap for >= 5; NaN for one)."""
    from scipy.stats import t

    from orchestrator.cost import BOOT_MIN, LEVEL, interval

    n = part["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t.ppf((1 + LEVEL) / 2, np.where(n > 1, n - 1, np.nan)) * part["std"].to_numpy() / np.sqrt(n)
    lo, hi = part["mean"].to_numpy() - half, part["mean"].to_numpy() + half
    many = np.flatnonzero(n >= BOOT_MIN)
    if len(many):
        by = {k: v.dropna().to_numpy() for k, v in vals.groupby(cfg)}
        for i in many:
            _, lo[i], hi[i], _ = interval(by[part.index[i]])
    return lo, hi


def seed_values(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The finished runs' values of `metric`, one row per run (the per-seed dots of the line figures)."""
    ok = runs[(runs["state"] == "ok")] if len(runs) else runs
    cols = ["method", "dataset", "variant", "rank", "budget", "seed"]
    if ok.empty or metric not in ok:
        return pd.DataFrame(columns=cols + ["value"])
    return ok[cols].assign(value=ok[metric].to_numpy()).dropna(subset=["value"])


def _lists(col: pd.Series) -> pd.Series:
    """True where a list column holds a non-empty list (null reads as None or NaN)."""
    return col.map(lambda v: v is not None and not isinstance(v, float) and len(v) > 0)


def _matrix(values, width: int, dtype=float):
    """Ragged lists -> a (n, width) array, padded with NaN (None -> NaN)."""
    import numpy as np

    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        row = np.asarray(list(v)[:width], dtype=float)  # None -> nan
        out[i, :len(row)] = row
    return out


def _ok_with(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """The finished runs that hold a list in `column` (empty when none does, or the store has no such column)."""
    ok = runs[runs["state"] == "ok"] if len(runs) else runs
    if ok.empty or column not in ok:
        return ok.iloc[0:0]
    return ok[_lists(ok[column])]


def reliability(runs: pd.DataFrame) -> pd.DataFrame:
    """Reliability diagram data pooled over seeds: one row per (configuration, bin) with count (images in the
    bin, summed over seeds), confidence and accuracy (count-weighted means over seeds), `runs` (ok runs with
    bins) and `bins` (bin count). Bin b of B covers (b/B, (b+1)/B]."""
    import numpy as np

    cols = KEYS + ["variant", "rank", "budget", "bin", "bins", "lo", "hi", "count", "confidence", "accuracy", "runs"]
    ok = _ok_with(runs, "reliability_count")
    if ok.empty:
        return pd.DataFrame(columns=cols)
    nb = int(ok["reliability_count"].map(len).max())
    count = np.nan_to_num(_matrix(ok["reliability_count"], nb))
    conf = np.nan_to_num(_matrix(ok["reliability_confidence"], nb)) * count  # an empty bin's null weighs 0
    acc = np.nan_to_num(_matrix(ok["reliability_accuracy"], nb)) * count
    cfg = ok.groupby(KEYS, dropna=False, sort=False).ngroup().to_numpy()
    n_cfg = int(cfg.max()) + 1
    sums = [np.zeros((n_cfg, nb)) for _ in range(3)]
    for total, part in zip(sums, (count, conf, acc)):
        np.add.at(total, cfg, part)
    first = ok.groupby(cfg, sort=True)[KEYS + ["variant", "rank", "budget"]].first()
    n_runs = np.bincount(cfg, minlength=n_cfg)
    rep = first.loc[first.index.repeat(nb)].reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        c, f, a = (x.ravel() for x in sums)
        rep = rep.assign(bin=np.tile(np.arange(nb), n_cfg), bins=nb, count=c.astype(int),
                         confidence=np.where(c > 0, f / c, np.nan), accuracy=np.where(c > 0, a / c, np.nan),
                         runs=np.repeat(n_runs, nb))
    rep["lo"], rep["hi"] = rep["bin"] / nb, (rep["bin"] + 1) / nb
    return rep[cols]


def class_accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, target class): the mean over seeds of the class's test accuracy (`accuracy`) and the
    seeds behind it (`n`), from the stored per_class_accuracy lists."""
    cols = KEYS + ["variant", "rank", "budget", "budget_rank", "target", "accuracy", "n"]
    ok = _ok_with(runs, "per_class_accuracy")
    if ok.empty:
        return pd.DataFrame(columns=cols)
    k = int(ok["per_class_accuracy"].map(len).max())
    acc = _matrix(ok["per_class_accuracy"], k)
    cfg = ok.groupby(KEYS, dropna=False, sort=False).ngroup().to_numpy()
    n_cfg = int(cfg.max()) + 1
    total, count = np.zeros((n_cfg, k)), np.zeros((n_cfg, k))
    np.add.at(total, cfg, np.nan_to_num(acc))
    np.add.at(count, cfg, ~np.isnan(acc))
    first = ok.groupby(cfg, sort=True)[KEYS + ["variant", "rank", "budget", "budget_rank"]].first()
    rep = first.loc[first.index.repeat(k)].reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rep = rep.assign(target=np.tile(np.arange(k), n_cfg), accuracy=(total / count).ravel(),
                         n=count.ravel().astype(int))
    return rep[rep["n"] > 0][cols].reset_index(drop=True)


def label_maps(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, target class): the source class most seeds mapped it to (`source`; on a tie
    the smallest index), `agree` seeds of `runs` that chose it, and `tied`: every source with that many seeds,
    comma-joined ('3' when one source leads; '3,4' when seeds split evenly between 3 and 4)."""
    import numpy as np

    cols = KEYS + ["variant", "rank", "budget", "target", "source", "agree", "runs", "tied"]
    ok = _ok_with(runs, "label_mapping")
    if ok.empty:
        return pd.DataFrame(columns=cols)
    cfg = ok.groupby(KEYS, dropna=False, sort=False).ngroup().to_numpy()
    lengths = ok["label_mapping"].map(len).to_numpy()
    long = pd.DataFrame({"cfg": np.repeat(cfg, lengths), "target": np.concatenate([np.arange(n) for n in lengths]),
                         "source": np.concatenate([np.asarray(m, dtype=np.int64) for m in ok["label_mapping"]])})
    votes = long.groupby(["cfg", "target", "source"]).size().rename("agree").reset_index()
    top = votes.groupby(["cfg", "target"])["agree"].transform("max")
    tops = votes[votes["agree"] == top].sort_values(["cfg", "target", "source"], kind="stable")
    tied = tops.groupby(["cfg", "target"], sort=False)["source"].agg(lambda s: ",".join(map(str, s))).rename("tied")
    best = tops.drop_duplicates(["cfg", "target"]).join(tied, on=["cfg", "target"])
    first = ok.groupby(cfg, sort=True)[KEYS + ["variant", "rank", "budget"]].first()
    first["runs"] = np.bincount(cfg)
    out = best.join(first, on="cfg")
    return out[cols].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- tables

def drops(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Each compressed configuration's mean minus the dense mean of the same (study, model, setup, method,
    dataset, shots) cell: columns KEYS, variant, rank, dense, compressed, drop (dense - compressed)."""
    s = summary[summary["metric"] == metric]
    cell = ["study", "model", "setup", "method", "dataset", "shots"]
    dense = s[s["compression"] == "dense"][cell + ["mean"]].rename(columns={"mean": "dense"})
    comp = s[s["compression"] != "dense"]
    m = comp.merge(dense, on=cell, how="inner")
    m = m.assign(compressed=m["mean"], drop=m["dense"] - m["mean"])
    return m[KEYS + ["level_key", "variant", "rank", "dense", "compressed", "drop", "upstream_accuracy"]]


def table_drops(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 1's data: per (study, model, setup, compression, level), the accuracy drop vs dense averaged over
    every matched (method, dataset, budget) cell, its largest value and the number of cells; with the dense and
    the compressed variant's upstream accuracy."""
    d = drops(summary)
    cols = ["study", "model", "setup", "compression", "level", "variant", "rank", "cells", "mean_drop", "max_drop",
            "upstream_dense", "upstream"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    acc = summary[summary["metric"] == "accuracy"]
    up_dense = acc[acc["compression"] == "dense"].groupby(["study", "model", "setup"])["upstream_accuracy"].first()
    g = d.groupby(["study", "model", "setup", "compression", "level"], dropna=False, sort=False)
    out = pd.DataFrame({"variant": g["variant"].first(), "rank": g["rank"].first(), "cells": g.size(),
                        "mean_drop": g["drop"].mean(), "max_drop": g["drop"].max(),
                        "upstream": g["upstream_accuracy"].first()}).reset_index()
    out["upstream_dense"] = [up_dense.get((a, b, c), math.nan) for a, b, c in zip(out["study"], out["model"], out["setup"])]
    return out.sort_values(["study", "model", "setup", "compression", "rank"], kind="stable")[cols].reset_index(drop=True)


def largest_budget(s: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (study, model, setup, dataset, method) at its largest data budget ('full' if any)."""
    if s.empty:
        return s
    top = s.groupby(["study", "model", "setup", "dataset", "method"], dropna=False)["budget_rank"].transform("max")
    return s[s["budget_rank"] == top]


# ------------------------------------------------------------------------------------------- planning

@dataclass
class Item:
    """One figure or table to write: its family, a file stem, a title, the rows it draws and the scope of
    runs (for its caption's counts and its list of missing runs)."""

    family: str
    stem: str
    title: str
    data: pd.DataFrame
    scope: dict  # column -> allowed values, over the run table
    note: str = ""
    extra: dict = field(default_factory=dict)


def families_of(runs: pd.DataFrame) -> list[tuple]:
    """(study, model, setup, compression family) of the run table: each non-dense compression of a model
    (drawn with that model's dense rows), or 'dense' for a model that has no other."""
    out = []
    for (study, model, setup), g in runs.groupby(["study", "model", "setup"], sort=False):
        comps = [c for c in dict.fromkeys(g["compression"]) if c != "dense"]
        out += [(study, model, setup, c) for c in (comps or ["dense"])]
    return out


def in_family(df: pd.DataFrame, study: str, model: str, setup: str, comp: str) -> pd.DataFrame:
    return df[(df["study"] == study) & (df["model"] == model) & (df["setup"] == setup)
              & df["compression"].isin(["dense", comp])]


def scope_of(study: str, model: str, setup: str, comp: str, **more) -> dict:
    return {"study": [study], "model": [model], "setup": [setup], "compression": ["dense", comp], **more}


def in_scope(runs: pd.DataFrame, scope: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    for col, values in scope.items():
        keep &= runs[col].isin(values)
    return runs[keep]


def name_of(study: str, model: str, setup: str) -> str:
    return " ".join(p for p in (f"[{study}]" if study else "", model, f"({setup})" if setup else "") if p)
