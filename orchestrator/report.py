"""Summary tables from the store: mean ± std over seeds, dense next to compressed."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from workers.core.spec import AXES

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("accuracy", "ece", "ece_paper", "conf_correct", "kl_incorrect", "kl_incorrect_paper")  # read without pandas
# `vpgrid report --out DIR` (orchestrator.deliver): its figure and table families, vector formats and metric variants
FAMILIES = ("accuracy", "ece", "confidence", "kl", "reliability", "mapping", "classwise", "lottery", "prompts",
            "best_epoch", "table1", "table2", "table3")
VECTOR_FORMATS = ("svg", "pdf")
VARIANTS = ("proper", "paper")
SELECT_KEYS = AXES
# The columns that name a configuration of the figures and the paired cost (figures.py, cost.py).
KEYS = ["study", "model", "setup", "compression", "level", "method", "dataset", "shots"]
# Every setting that changes a run besides the summary's axes: runs that differ in any of them are never averaged
# as seeds of one configuration. (compression and its level are in `variant`; seed is what is averaged over.)
SETTINGS = ("weights", "model_args", "compression_args", "dataset_args", "epochs", "lr", "batch_size", "input_size",
            "milestones", "gamma", "eval_batch_size", "eval_every", "prompt_kind")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def shots_text(shots: Any) -> str:
    """'full' for the whole training split, else the integer (pandas reads a nullable int column as float)."""
    return "full" if _missing(shots) else str(int(shots))


def _setting_text(v: Any) -> str:
    """A hashable, readable form of one setting: '' for null, numbers as written, lists comma-joined."""
    if _missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    if hasattr(v, "__len__") and not isinstance(v, str):  # a list column reads as a numpy array
        return ",".join(_setting_text(x) for x in v)
    return str(v)


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    ok = df[df["status"] == "ok"].copy() if "status" in df else df.iloc[0:0]
    if ok.empty:  # an empty store's columns have no usable dtypes: nothing to prepare
        return ok
    level = ok["compression_level"].map(lambda v: "" if pd.isna(v) else f"@{v:g}")
    ok["variant"] = ok["model"] + " " + ok["compression"] + level
    ok["budget"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else f"{int(s)}-shot")
    for c in SETTINGS:  # a store written before a column existed reads it as null: one value, ""
        ok[c] = ok[c].map(_setting_text) if c in ok else ""
    # dense first, then by compression and level; shots ascending with full last
    ok["_v"] = list(zip(ok["model"], ok["compression"] != "dense", ok["compression"], ok["compression_level"].fillna(0)))
    ok["_b"] = ok["shots"].fillna(float("inf"))
    return ok


def summary(df: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, method, shots, SETTINGS): number of seeds, mean and std of each metric."""
    import pandas as pd

    ok = _prepare(df)
    if ok.empty:
        return pd.DataFrame()
    keys = ["dataset", "variant", "method", "budget", *SETTINGS]
    g = ok.sort_values(["dataset", "_v", "method", "_b"]).groupby(keys, sort=False)
    out = g.size().rename("seeds").to_frame()
    if "upstream_accuracy" in ok:  # the variant's source-task accuracy, beside its transfer numbers (null: not measured)
        out["upstream_accuracy"] = g["upstream_accuracy"].first()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def _distinguishing(t: pd.DataFrame) -> list[str]:
    """The settings that tell apart configurations of one (variant, method, budget) cell. A setting that is a
    function of the budget (the demo's batch_size per shots) varies across columns, not within a cell: labelling
    rows by it would split one configuration's row into one per budget."""
    cells = t.groupby(["variant", "method", "budget"], sort=False)
    return [c for c in SETTINGS if (cells[c].nunique() > 1).any()]


def _cell(mean: float, std: float, scale: float) -> str:
    import pandas as pd

    f = ".1f" if scale == 100 else ".4f"  # percentages, or small raw values (ece_paper, KL) that .1f would zero
    return f"{scale * mean:{f}}" + ("" if pd.isna(std) else f" ± {scale * std:{f}}")


def markdown(table: pd.DataFrame, metrics=("accuracy", "ece")) -> str:
    """Per dataset and metric, a Markdown pivot: rows variant × method, columns data budget."""
    if table.empty:
        return "(no finished runs)"
    parts = []
    budgets = list(dict.fromkeys(table["budget"]))
    budgets.sort(key=lambda b: float("inf") if b == "full" else int(b.split("-")[0]))
    for dataset, t in table.groupby("dataset", sort=False):
        varying = _distinguishing(t)  # shown in the row label, so rows stay apart
        t = t.assign(setup=t[varying].apply(lambda r: " ".join(f"{c}={r[c]}" for c in varying), axis=1)
                     if varying else "")
        for m in metrics:
            scale = 100.0 if m in ("accuracy", "ece", "conf_correct") else 1.0
            unit = " (%)" if scale == 100 else ""
            seeds = f"{t['seeds'].min()}" + (f"–{t['seeds'].max()}" if t['seeds'].max() != t['seeds'].min() else "")
            parts.append(f"**{dataset} — {m}{unit}**, mean ± std over {seeds} seeds\n")
            head = ["variant", "method"] + (["setup"] if varying else []) + budgets
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for (variant, method, setup), r in t.groupby(["variant", "method", "setup"], sort=False):
                cells = {b: _cell(x, s, scale) for b, x, s in zip(r["budget"], r[f"{m}_mean"], r[f"{m}_std"])}
                up = r["upstream_accuracy"].dropna() if "upstream_accuracy" in r else r.iloc[0:0, 0]
                name = variant + (f" ({_upstream_short(variant)} {100 * up.iloc[0]:.1f})" if len(up) else "")
                label = [name, method] + ([setup.replace("|", "\\|")] if varying else [])
                lines.append("| " + " | ".join(label + [cells.get(b, "") for b in budgets]) + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _upstream_short(variant: str) -> str:
    """The source task a variant ("MODEL COMPRESSION") is measured on upstream, in a word: ImageNet-1k, shapes."""
    from workers.core.classnames import upstream_task

    return upstream_task(variant.split()[0]).split()[0]
