"""The report's numbers, aggregated from the run table (orchestrator.report.runs), which the plotting layer only
draws. `summarize` turns its ok rows into mean, std, count and 95% interval over seeds per configuration and
metric (every scalar figure and table of `--out` reads it); `reliability` pools the stored calibration bins over
seeds; `class_accuracy` averages the per-class accuracies; `label_maps` takes the label mapping each configuration
agreed on over its seeds; `drops` and `table_drops` set each compressed configuration against its dense cell.
pandas only, no torch, no matplotlib.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from orchestrator.report.cost import BOOT_MIN, LEVEL, interval
from orchestrator.report.names import KEYS, METRIC_INFO
from orchestrator.report.runs import is_list


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
    """(lo, hi) of the 95% interval of each configuration's mean (cost.interval: t for 2-4 seeds, vectorised
    here; a bootstrap for >= 5; NaN for one)."""
    from scipy.stats import t

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


def _matrix(values, width: int):
    """Ragged lists -> a (n, width) array, padded with NaN (None -> NaN)."""
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
    return ok[ok[column].map(is_list)]


def reliability(runs: pd.DataFrame) -> pd.DataFrame:
    """Reliability diagram data pooled over seeds: one row per (configuration, bin) with count (images in the
    bin, summed over seeds), confidence and accuracy (count-weighted means over seeds), `runs` (ok runs with
    bins) and `bins` (bin count). Bin b of B covers (b/B, (b+1)/B]."""
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
