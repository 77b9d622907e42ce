"""Summary tables from the store: mean ± std over seeds, dense next to compressed."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("accuracy", "ece", "conf_correct", "kl_incorrect")  # the CLI reads this without importing pandas


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    ok = df[df["status"] == "ok"].copy() if "status" in df else df.iloc[0:0]
    if ok.empty:  # an empty store's columns have no usable dtypes: nothing to prepare
        return ok
    level = ok["compression_level"].map(lambda v: "" if pd.isna(v) else f"@{v:g}")
    ok["variant"] = ok["model"] + " " + ok["compression"] + level
    ok["budget"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else f"{int(s)}-shot")
    # dense first, then by compression and level; shots ascending with full last
    ok["_v"] = list(zip(ok["model"], ok["compression"] != "dense", ok["compression"], ok["compression_level"].fillna(0)))
    ok["_b"] = ok["shots"].fillna(float("inf"))
    return ok


def summary(df: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, method, shots): number of seeds, and mean and std of each metric."""
    import pandas as pd

    ok = _prepare(df)
    if ok.empty:
        return pd.DataFrame()
    keys = ["dataset", "variant", "method", "budget"]
    g = ok.sort_values(["dataset", "_v", "method", "_b"]).groupby(keys, sort=False)
    out = g.size().rename("seeds").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def _cell(mean: float, std: float, scale: float) -> str:
    import pandas as pd

    return f"{scale * mean:.1f}" + ("" if pd.isna(std) else f" ± {scale * std:.1f}")


def markdown(table: pd.DataFrame, metrics=("accuracy", "ece")) -> str:
    """Per dataset and metric, a Markdown pivot: rows variant × method, columns data budget."""
    if table.empty:
        return "(no finished runs)"
    parts = []
    budgets = list(dict.fromkeys(table["budget"]))
    budgets.sort(key=lambda b: float("inf") if b == "full" else int(b.split("-")[0]))
    for dataset, t in table.groupby("dataset", sort=False):
        for m in metrics:
            scale = 100.0 if m in ("accuracy", "ece", "conf_correct") else 1.0
            unit = " (%)" if scale == 100 else ""
            seeds = f"{t['seeds'].min()}" + (f"–{t['seeds'].max()}" if t['seeds'].max() != t['seeds'].min() else "")
            parts.append(f"**{dataset} — {m}{unit}**, mean ± std over {seeds} seeds\n")
            head = ["variant", "method"] + budgets
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for (variant, method), r in t.groupby(["variant", "method"], sort=False):
                cells = {b: _cell(x, s, scale) for b, x, s in zip(r["budget"], r[f"{m}_mean"], r[f"{m}_std"])}
                lines.append("| " + " | ".join([variant, method] + [cells.get(b, "") for b in budgets]) + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
