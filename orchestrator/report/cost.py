"""The hidden cost with its uncertainty: each compressed variant against its dense model, paired by seed.

For a compressed configuration (study, model, setup, compression, level, method, dataset, shots) and its dense
cell (the same everything, compression dense), every seed that finished in both gives one difference
compressed − dense (the same seed draws the same few-shot subset and the same initial state, so the pair shares
everything but the model). Over those n differences: the mean, and a 95% interval — Student's t,
mean ± t(0.975, n − 1) · sd / √n, for 2 ≤ n < 5; a percentile bootstrap of the mean (BOOTSTRAP resamples,
a fixed seed) for n ≥ BOOT_MIN; none for n = 1 (a single pair says nothing about its spread).
pandas, numpy and scipy only; no torch, no matplotlib.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.report.names import KEYS, name_of

COST_METRICS = ("accuracy", "ece")  # differences in points (x 100)
CELL = ["study", "model", "setup", "method", "dataset", "budget_rank"]  # a dense cell: everything but compression
BOOT_MIN, BOOTSTRAP, LEVEL = 5, 2000, 0.95
COLUMNS = KEYS + ["level_key", "variant", "rank", "budget", "budget_rank", "metric", "n", "mean", "lo", "hi",
                  "interval", "excludes_zero", "seeds", "dense_mean", "compressed_mean"]
# The paper's categories (Table 1); a compression not named here is classed by its level's key.
CATEGORY = {"magnitude": "unstructured", "random": "unstructured", "gmp": "unstructured", "acdc": "unstructured",
            "rigl": "unstructured", "str": "unstructured", "lth": "unstructured", "channel": "structured",
            "upop": "structured", "fakequant": "quantization", "vvtq": "quantization"}
CATEGORY_OF_KEY = {"sparsity": "unstructured", "round": "unstructured", "ratio": "structured", "bits": "quantization"}


def category(compression: str, level_key: str) -> str:
    return CATEGORY.get(compression) or CATEGORY_OF_KEY.get(level_key, "")


def interval(values, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float, str]:
    """(mean, lo, hi, kind) of paired differences: kind 't', 'bootstrap' or '' (one value: lo = hi = NaN)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, ""
    if n >= BOOT_MIN:
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return mean, float(lo), float(hi), "bootstrap"
    from scipy.stats import t

    half = float(t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, "t"


def pairs(runs: pd.DataFrame, metrics=COST_METRICS) -> pd.DataFrame:
    """One row per (compressed run, metric) that has a dense partner of the same seed: KEYS, seed, metric,
    compressed, dense, diff (compressed − dense, the stored unit)."""
    ok = runs[runs["state"] == "ok"] if len(runs) else runs
    cols = KEYS + ["level_key", "variant", "rank", "budget", "budget_rank", "seed", "metric", "compressed", "dense",
                   "diff"]
    if ok.empty or not (ok["compression"] == "dense").any():
        return pd.DataFrame(columns=cols)
    dense, comp = ok[ok["compression"] == "dense"], ok[ok["compression"] != "dense"]
    parts = []
    for m in metrics:
        if m not in ok:
            continue
        d = dense[CELL + ["seed", m]].dropna(subset=[m]).drop_duplicates(CELL + ["seed"]).rename(columns={m: "dense"})
        c = comp[KEYS + ["level_key", "variant", "rank", "budget", "budget_rank", "seed", m]].dropna(subset=[m])
        j = c.rename(columns={m: "compressed"}).merge(d, on=CELL + ["seed"], how="inner")
        parts.append(j.assign(metric=m, diff=j["compressed"] - j["dense"]))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    return out[cols]


def summarize(p: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per group of `by` (default: a configuration and metric), the paired cost: n, mean, lo, hi, interval,
    excludes_zero, seeds, dense_mean, compressed_mean. A group that spans several cells (datasets, say) is
    first averaged per seed, so each seed stays one pair. The t interval is computed for all groups at once;
    only groups with >= BOOT_MIN seeds are bootstrapped one by one."""
    by = by or KEYS + ["level_key", "variant", "rank", "budget", "budget_rank", "metric"]
    cols = [*by, "n", "mean", "lo", "hi", "interval", "excludes_zero", "seeds", "dense_mean", "compressed_mean"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    per_seed = p.groupby(by + ["seed"], dropna=False, sort=False)[["diff", "dense", "compressed"]].mean().reset_index()
    g = per_seed.groupby(by, dropna=False, sort=False)
    out = g.agg(n=("diff", "size"), mean=("diff", "mean"), sd=("diff", "std"), dense_mean=("dense", "mean"),
                compressed_mean=("compressed", "mean")).reset_index()
    out["seeds"] = g["seed"].agg(lambda x: ",".join(str(int(v)) for v in sorted(x))).to_numpy()
    from scipy.stats import t

    n = out["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t.ppf((1 + LEVEL) / 2, np.where(n > 1, n - 1, np.nan)) * out["sd"].to_numpy() / np.sqrt(n)
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    out["interval"] = np.where(n >= BOOT_MIN, "bootstrap", np.where(n > 1, "t", ""))
    many = np.flatnonzero(n >= BOOT_MIN)
    if len(many):
        groups = [x["diff"].to_numpy() for _, x in g]
        for i in many:
            _, out.loc[i, "lo"], out.loc[i, "hi"], _ = interval(groups[i])
    out["excludes_zero"] = (out["interval"] != "") & ((out["lo"] > 0) | (out["hi"] < 0))
    return out[cols]


def cost(paired: pd.DataFrame) -> pd.DataFrame:
    """cost.csv: the paired cost of every compressed configuration, per metric of COST_METRICS (`paired`: pairs())."""
    c = summarize(paired)
    return c[COLUMNS] if len(c) else pd.DataFrame(columns=COLUMNS)


def with_cost(summary: pd.DataFrame, c: pd.DataFrame) -> pd.DataFrame:
    """summary.csv's rows with the paired cost beside them (cost_mean, cost_lo, cost_hi, cost_n; null on dense
    rows and on metrics without one)."""
    keep = c[KEYS + ["metric", "n", "mean", "lo", "hi"]].rename(
        columns={"n": "cost_n", "mean": "cost_mean", "lo": "cost_lo", "hi": "cost_hi"})
    out = summary.merge(keep, on=KEYS + ["metric"], how="left")
    return out


def points(v: float, signed: bool = True) -> str:
    return "–" if v is None or math.isnan(v) else f"{100 * v:+.1f}".replace("-", "−") if signed else \
        f"{100 * v:.1f}".replace("-", "−")


def text(mean: float, lo: float, hi: float, n: int) -> str:
    """'−25.1 [−31.0, −19.2]' in points; '−25.1 (1 seed)' without an interval."""
    n = int(n)
    if math.isnan(lo):
        return f"{points(mean)} [{n} seed{'s' * (n != 1)}: no interval]"
    return f"{points(mean)} [{points(lo)}, {points(hi)}]"


MAX_FINDINGS, MAX_THIN = 8, 12  # lines per model x compression; thin cells named (all are in cost.csv)
MARK = "✱"


def findings(c: pd.DataFrame) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The report's opening: (intro lines, [(model x compression heading, lines)]). Per model x compression,
    the cells at their largest data budget sorted by the accuracy cost (largest loss first), each with its
    interval and seeds; MARK where the accuracy interval excludes 0; the cells with one seed named as too thin
    to say. It states numbers and whether their interval excludes 0, no more."""
    intro = ["Paired cost of compression: compressed minus dense, paired by seed (same seed, same few-shot subset), "
             "in points; mean [95% interval] (Student t over seeds; bootstrap with ≥ 5 seeds). "
             f"{MARK}: the accuracy interval excludes 0. Cells at their largest data budget; every budget is in "
             "[cost.csv](cost.csv)."]
    acc = c[c["metric"] == "accuracy"]
    if acc.empty:
        return ["No compressed variant has a dense partner with the same seed yet: no paired cost."], []
    ece = c[c["metric"] == "ece"][KEYS + ["mean", "lo", "hi", "n"]]
    acc = acc.merge(ece, on=KEYS, how="left", suffixes=("", "_ece"))
    top = acc.groupby(CELL[:-1], dropna=False)["budget_rank"].transform("max")
    out = []
    for (study, model, setup, comp), g in acc.groupby(["study", "model", "setup", "compression"], sort=False):
        head = f"{name_of(study, model, setup)} {comp}"
        t = g[(g["budget_rank"] == top[g.index]) & (g["n"] > 1)].sort_values("mean", kind="stable")
        multi = t["dataset"].nunique() > 1
        lines = []
        for _, r in t.head(MAX_FINDINGS).iterrows():
            has_ece = not math.isnan(r["n_ece"])
            where = f"{r['variant']} · {r['method']}" + (f" · {r['dataset']}" if multi else "") + f" · {r['budget']}"
            line = (f"{where}: accuracy {text(r['mean'], r['lo'], r['hi'], r['n'])}"
                    + (f"; ECE {text(r['mean_ece'], r['lo_ece'], r['hi_ece'], r['n_ece'])}" if has_ece else "")
                    + f"; {r['n']} seed{'s' * (r['n'] != 1)}" + (f" {MARK}" if r["excludes_zero"] else ""))
            lines.append(line)
        if len(t) > MAX_FINDINGS:
            lines.append(f"… {len(t) - MAX_FINDINGS} more cells at the largest budget (the smallest costs): cost.csv")
        if len(t) and not t["excludes_zero"].any() and (t["n"] > 1).any():
            lines.append("No interval here excludes 0: these seeds do not resolve an accuracy cost at this budget.")
        thin = g[g["n"] == 1]
        if len(thin):
            names = [f"{v} · {m} · {ds} · {b}" if g["dataset"].nunique() > 1 else f"{v} · {m} · {b}"
                     for v, m, ds, b in zip(thin["variant"], thin["method"], thin["dataset"], thin["budget"])]
            more = f" and {len(names) - MAX_THIN} more" if len(names) > MAX_THIN else ""
            lines.append(f"Too thin to say (1 seed, no interval): {', '.join(names[:MAX_THIN])}{more}.")
        out.append((head, lines))
    return intro, out
