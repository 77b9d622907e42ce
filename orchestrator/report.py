"""Summary tables from the store: mean ± std over seeds, dense next to compressed."""
from __future__ import annotations

import pandas as pd

METRICS = ("accuracy", "ece", "conf_correct", "kl_incorrect")


def variant_label(df: pd.DataFrame) -> pd.Series:
    level = df["compression_level"].map(lambda v: "" if pd.isna(v) else f"@{v:g}")
    return df["model"] + " " + df["compression"] + level


def summary(df: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, method, shots): seeds, and mean/std of each metric."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["variant"] = variant_label(ok)
    ok["shots"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else str(int(s)))
    keys = ["variant", "dataset", "method", "shots"]
    g = ok.groupby(keys, sort=False)
    out = g.size().rename("seeds").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1) if g.size().min() > 1 else float("nan")
    return out.reset_index()


def markdown(table: pd.DataFrame, metrics=("accuracy", "ece")) -> str:
    """The summary as a Markdown table, values in percent: mean ± std."""
    if table.empty:
        return "(no finished runs)"
    cols = ["variant", "dataset", "method", "shots", "seeds"] + list(metrics)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [str(r[c]) for c in cols[:5]]
        for m in metrics:
            mean, std = 100 * r[f"{m}_mean"], 100 * r[f"{m}_std"]
            cells.append(f"{mean:.1f}" + ("" if pd.isna(std) else f" ± {std:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
