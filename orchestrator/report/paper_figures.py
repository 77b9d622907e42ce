"""The paper's remaining figures, planned per model and compression: class-wise impact (per target class, dense vs
compressed), the lottery-ticket Δ heat-map (level x dataset) when a compression has more than 3 levels, the
learned prompts (read from STORE/_prompts/) and best-epoch accuracy beside the last epoch's when `eval_every`
is on. Each is drawn for the model's best method (the highest dense accuracy at the largest data budget, as the
paper reads its results for ILM-VP). pandas only; drawing is in orchestrator.report.plots_paper.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from orchestrator.report import aggregate as A
from orchestrator.report import cost as C
from orchestrator.report.entry import Entry, html_table, md_table, slug
from orchestrator.report.names import LEVEL_NAMES

MAX_CLASSES = 20  # classes drawn in a class-wise figure (those that lose most); all are in its CSV
MAX_PROMPT_LEVELS = 3  # compressed levels drawn beside dense in the prompt and class-wise figures
HEATMAP_LEVELS = 3  # a compression with more levels than this gets the Δ heat-map


def best_method(fam_runs: pd.DataFrame) -> Optional[str]:
    """The method with the highest mean dense accuracy at each dataset's largest budget (None: no dense run)."""
    ok = fam_runs[(fam_runs["state"] == "ok") & (fam_runs["compression"] == "dense")].dropna(subset=["accuracy"])
    if ok.empty:
        return None
    top = ok[ok["budget_rank"] == ok.groupby(["method", "dataset"])["budget_rank"].transform("max")]
    return top.groupby("method", sort=False)["accuracy"].mean().idxmax()


def _top(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["budget_rank"] == df.groupby("dataset")["budget_rank"].transform("max")] if len(df) else df


def entries(fam_runs, paired, study, model, setup, comp, head, families, extra: dict) -> list:
    if comp == "dense":
        return []
    best = best_method(fam_runs)
    out = []
    if "classwise" in families and extra.get("classes") is not None:
        out.append(_classwise(fam_runs, extra["classes"], best, study, model, setup, comp, head))
    levels = fam_runs.loc[fam_runs["rank"] > 0, "rank"].nunique()
    if "lottery" in families and levels > HEATMAP_LEVELS:
        out.append(_heatmap(fam_runs, paired, best, study, model, setup, comp, head))
    if "prompts" in families and extra.get("read_prompt") is not None:
        out.append(_prompts(fam_runs, extra["read_prompt"], study, model, setup, comp, head))
    if "best_epoch" in families and fam_runs["best_epoch_accuracy"].notna().any():
        out.append(_best_epoch(fam_runs, study, model, setup, comp, head))
    return out


def _classwise(fam_runs, classes, best, study, model, setup, comp, head):
    from workers.core.classnames import target_name_or_index

    r = fam_runs[fam_runs["method"] == best] if best else fam_runs.iloc[0:0]
    r = _top(r)
    e = Entry("classwise", f"{head}, {best}: per-class accuracy, compressed − dense", r,
               stem=f"classwise/{slug(study, model, setup, comp)}",
               what=f"per target class, test accuracy of each compressed level minus the dense model's (points; "
                    f"means over seeds), for {best}, the most accurate method, at the largest data budget; the "
                    f"{MAX_CLASSES} classes that lose most at the most compressed level, sorted by that loss")
    c = classes[(classes["study"] == study) & (classes["model"] == model) & (classes["setup"] == setup)
                & classes["compression"].isin(["dense", comp]) & (classes["method"] == best)]
    c = _top(c)
    if c.empty or not (c["rank"] == 0).any() or not (c["rank"] > 0).any():
        e.skipped = "no finished dense and compressed runs with per-class accuracy for the best method"
        return e
    ds = c["dataset"].iloc[0]
    if c["dataset"].nunique() > 1:
        e.note = f"Drawn for {ds}, the grid's first dataset; every dataset is in the CSV. "
    dense = c[c["rank"] == 0].set_index(["dataset", "target"])["accuracy"]
    comp_rows = c[c["rank"] > 0]
    d = comp_rows.assign(dense=[dense.get((a, b), math.nan) for a, b in zip(comp_rows["dataset"], comp_rows["target"])])
    d = d.assign(delta=d["accuracy"] - d["dense"],
                 target_label=[target_name_or_index(t, x) for t, x in zip(d["target"], d["dataset"])])
    e.csv = d
    d = d[d["dataset"] == ds]
    ranks = sorted(d["rank"].unique())
    if len(ranks) > MAX_PROMPT_LEVELS:  # evenly spaced levels, the most compressed always in; all in the CSV
        idx = dict.fromkeys(round(i * (len(ranks) - 1) / (MAX_PROMPT_LEVELS - 1)) for i in range(MAX_PROMPT_LEVELS))
        e.note += f"{len(idx)} of {len(ranks)} compressed levels drawn. "
        d = d[d["rank"].isin([ranks[i] for i in idx])]
    worst = d[d["rank"] == d["rank"].max()].sort_values("delta")["target"].tolist()
    if len(worst) > MAX_CLASSES:
        e.note += f"{MAX_CLASSES} of {len(worst)} classes drawn. "
    d = d[d["target"].isin(worst[:MAX_CLASSES])]
    e.title = f"{head}, {best}, {ds}: per-class accuracy, compressed − dense"
    e.draw = ("class_bars", dict(data=d, order=worst[:MAX_CLASSES], title=e.title,
                                 n_levels=int(fam_runs["rank"].max())))
    return e


def _heatmap(fam_runs, paired, best, study, model, setup, comp, head):
    r = _top(fam_runs[fam_runs["method"] == best]) if best else fam_runs.iloc[0:0]
    e = Entry("lottery", f"{head}, {best}: accuracy cost per level and dataset", r,
               stem=f"lottery/{slug(study, model, setup, comp)}",
               what=f"compressed − dense test accuracy (points), paired by seed, for {best} at each dataset's largest "
                    "data budget; a cell per level and dataset, bold where its 95% interval excludes 0")
    p = paired[(paired["metric"] == "accuracy") & (paired["study"] == study) & (paired["model"] == model)
               & (paired["setup"] == setup) & (paired["compression"] == comp) & (paired["method"] == best)] \
        if len(paired) else paired
    p = p.merge(r[["dataset", "budget_rank"]].drop_duplicates()) if len(p) else p
    if p.empty:
        e.skipped = "no level with a dense partner of the same seed yet"
        return e
    s = C.summarize(p, ["dataset", "rank", "variant", "level"])
    e.csv = s
    e.draw = ("delta_heatmap", dict(data=s, title=e.title, ylabel=LEVEL_NAMES.get(r["level_key"].max(), "level")))
    return e


def _prompts(fam_runs, read_prompt, study, model, setup, comp, head):
    ok = fam_runs[(fam_runs["state"] == "ok") & fam_runs["prompt_path"].notna()] if "prompt_path" in fam_runs \
        else fam_runs.iloc[0:0]
    e = Entry("prompts", f"{head}: learned prompts, dense vs compressed", fam_runs,
               stem=f"prompts/{slug(study, model, setup, comp)}",
               what="the learned border prompt of one run per method and variant (sigmoid of the parameter, as added "
                    "to the image; the grey centre is where the target image goes), the lowest seed at the largest "
                    "data budget")
    if ok.empty:
        e.skipped = "no finished run with a stored prompt (STORE/_prompts/)"
        return e
    ok = _top(ok)
    ds = ok["dataset"].iloc[0]
    ok = ok[ok["dataset"] == ds]
    ranks = sorted(x for x in ok["rank"].unique() if x > 0)
    if len(ranks) > MAX_PROMPT_LEVELS:  # evenly spaced, the most compressed always in
        idx = [round(i * (len(ranks) - 1) / (MAX_PROMPT_LEVELS - 1)) for i in range(MAX_PROMPT_LEVELS)]
        e.note = f"{len(dict.fromkeys(idx))} of {len(ranks)} compressed levels drawn. "
        ranks = [ranks[i] for i in dict.fromkeys(idx)]
    ok = ok[ok["rank"].isin([0, *ranks])]
    # one seed per method where every variant has it (the same few-shot subset and start), else each its lowest
    common = {m: set.intersection(*(set(x) for _, x in g.groupby("rank")["seed"])) for m, g in ok.groupby("method")} \
        if len(ok) else {}
    ok = ok[[not common[m] or sd == min(common[m]) for m, sd in zip(ok["method"], ok["seed"])]]
    ok = ok.sort_values(["seed"], kind="stable").drop_duplicates(["method", "rank"])
    images, rows = {}, []
    from safetensors.numpy import load

    for run_key, m, v, rk, seed in zip(ok["run_key"], ok["method"], ok["variant"], ok["rank"], ok["seed"]):
        data = read_prompt(run_key)
        if data is None:
            continue
        t = load(data)
        if "prompt" not in t or t["prompt"].ndim != 3:
            continue
        images[(m, v)] = (1 / (1 + np.exp(-t["prompt"].astype(np.float32)))).transpose(1, 2, 0)
        rows.append((m, v, int(rk), int(seed), run_key))
    if not images:
        e.skipped = "the stored prompts are not pad prompts (no 3-channel 'prompt' tensor)"
        return e
    e.title = f"{head}, {ds}: learned prompts, dense vs compressed"
    e.csv = pd.DataFrame(rows, columns=["method", "variant", "rank", "seed", "run_key"])
    e.draw = ("prompt_grid", dict(images=images, cells=e.csv, title=e.title))
    return e


def _best_epoch(fam_runs, study, model, setup, comp, head):
    r = _top(fam_runs)
    e = Entry("best_epoch", f"{head}: best-epoch and last-epoch accuracy at the largest data budget", r,
               stem=f"tables/best_epoch_{slug(study, model, setup, comp)}",
               what="test accuracy (%) after the last epoch, and the best of the test accuracies logged every "
                    "`eval_every` epochs (the paper logged every epoch; picked on the test split, so an optimistic "
                    "figure), means over seeds")
    s = A.summarize(r, ["accuracy", "best_epoch_accuracy"])
    if s.empty or not (s["metric"] == "best_epoch_accuracy").any():
        e.skipped = "no finished run logged epoch accuracies"
        return e
    w = s.pivot_table(index=["dataset", "method", "rank", "variant"], columns="metric", values="mean",
                      aggfunc="first").reset_index().sort_values(["dataset", "method", "rank"], kind="stable")
    shown = pd.DataFrame({"dataset": w["dataset"], "method": w["method"], "variant": w["variant"],
                          "last epoch (%)": [f"{100 * x:.1f}" for x in w["accuracy"]],
                          "best epoch (%)": ["–" if math.isnan(x) else f"{100 * x:.1f}"
                                             for x in w["best_epoch_accuracy"]]})
    e.table_md, e.table_html, e.csv = md_table(shown), html_table(shown), s
    return e
