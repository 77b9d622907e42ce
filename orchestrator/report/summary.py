"""`vpgrid report STORE`'s table: mean ± std over seeds per variant, dataset, method and data budget, dense next to
compressed, from the run table (orchestrator.report.runs); as JSON records or Markdown."""
from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.report.names import METRICS, SETTINGS, variant_tag

if TYPE_CHECKING:
    import pandas as pd


def summary(runs: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, method, budget, SETTINGS) of the finished runs: number of seeds, mean and
    std of each metric, and the variant's upstream accuracy. A row's variant is 'MODEL TAG' (names.variant_tag);
    rows run dense first, then by compression and level, budgets ascending with full last."""
    import pandas as pd

    ok = runs[runs["state"] == "ok"] if len(runs) else runs
    if ok.empty:
        return pd.DataFrame()
    tags = [f"{m} {variant_tag(c, lv)}" for m, c, lv in zip(ok["model"], ok["compression"], ok["level"])]
    ok = ok.assign(variant=tags,
                   _v=list(zip(ok["model"], ok["compression"] != "dense", ok["compression"], ok["level"].fillna(0))),
                   _b=ok["shots"].fillna(float("inf")))
    keys = ["dataset", "variant", "method", "budget", *SETTINGS]
    g = ok.sort_values(["dataset", "_v", "method", "_b"]).groupby(keys, sort=False)
    out = g.size().rename("seeds").to_frame()
    out["upstream_accuracy"] = g["upstream_accuracy"].first()  # the source-task accuracy (null: not measured)
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
