"""`vpgrid report STORE --out DIR`: every figure and table that the store's axes allow, and an index.

Plans from the run table (orchestrator.figures): a figure family is drawn once per model (with its setup, in its
study) and compression, so a user's own model, compression or dataset appears with no change here. What cannot
be drawn is listed in the index with the reason; pending and failed runs are counted in each caption and listed
(and all of them in DIR/missing.csv), never averaged in.
"""
from __future__ import annotations

import html
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from orchestrator import figures as F

from orchestrator.report import FAMILIES, VARIANTS, VECTOR_FORMATS  # noqa: F401  (the CLI reads them without pandas)
FAMILY_TITLES = {
    "accuracy": "Transfer accuracy vs data budget (the paper's Figs. 2–6)",
    "ece": "Calibration error vs compression level (Figs. 7–9)",
    "confidence": "Mean confidence of the true class vs compression level (Figs. 10, 12)",
    "kl": "Distance to uniform on incorrect predictions vs compression level (Figs. 11, 13)",
    "reliability": "Reliability diagrams, dense vs compressed",
    "mapping": "Label mapping, dense vs compressed (Fig. 1)",
    "table1": "Table 1: accuracy drop per architecture and compression",
    "table2": "Table 2: accuracy at the largest data budget, dense vs compressed, per method",
    "table3": "Tables 3–4: accuracy across models (per study and method, largest data budget)",
    "classwise": "Class-wise impact: per-class accuracy, compressed − dense",
    "lottery": "Lottery-ticket Δ heat-map: accuracy cost per level and dataset",
    "prompts": "Learned prompts, dense vs compressed",
    "best_epoch": "Best-epoch accuracy beside the last epoch's",
}
RUN_COLUMNS = ["run_key", "state", "in_grid", "study", "model", "setup", "compression", "level", "level_key", "variant",
               "rank", "method", "dataset", "shots", "budget", "budget_rank", "seed", "error", "classes",
               *F.METRIC_INFO, "best_epoch_accuracy", "prompt_path"]
MAX_LISTED = 25  # missing runs listed under each item; all of them are in missing.csv
MAX_TARGETS = 30  # target classes drawn in a label-mapping figure; all are in its CSV
MAX_LEVELS = 3  # compressed levels drawn beside dense in a label-mapping figure


@dataclass
class Options:
    select: dict = field(default_factory=dict)
    ece: str = "proper"
    kl: str = "proper"
    families: tuple = FAMILIES
    vector: str = "svg"
    metrics: tuple = ("accuracy", "ece")


@dataclass
class Entry:
    """One figure or table of the index (or one that could not be made: `skipped` says why)."""

    family: str
    title: str
    runs: pd.DataFrame  # the runs in its scope, every state
    what: str = ""
    files: list = field(default_factory=list)  # paths relative to DIR
    table_md: str = ""
    table_html: str = ""
    skipped: str = ""
    draw: Optional[tuple] = None  # (plots.KINDS name, its keyword arguments): drawn by plots.render
    stem: str = ""
    note: str = ""
    csv: Optional[pd.DataFrame] = None  # the data behind a figure or table
    caption: str = ""  # made once by caption()
    extra_md: str = ""  # a longer Markdown table, written beside the figure and linked, not shown inline

    def counts(self) -> tuple[int, int, int]:
        st = self.runs["state"] if len(self.runs) else pd.Series(dtype=str)
        return int((st == "ok").sum()), int((st == "pending").sum()), int((st == "failed").sum())


def slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(p for p in parts if p)).strip("-")


def _fmt(v: float, scale: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.1f}" if scale == 100 else f"{v:.4g}"


def _n_text(ns) -> str:
    ns = sorted({int(x) for x in ns})
    return "none" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def load(store: str, opts: Options):
    """(store, grid, run table after --select) from a store location."""
    from orchestrator.grid import expand, parse_grid
    from workers.core.store import Store

    s = Store(store)
    text = s.grid_text()
    grid = parse_grid(text, f"{s.root}/_vpgrid/grid.yaml")
    specs, study_of = [], {}
    names = [st.name for st in grid.studies] or [""]
    for name, part in zip(names, grid.parts()):
        for spec in expand(part):
            specs.append(spec)
            study_of[spec.run_key] = name
    runs = F.run_table(s.frame(), specs, study_of)
    for axis, values in opts.select.items():  # a value that selects nothing is a usage error, not an empty report
        have = {F.axis_value(axis, v) for v in runs[axis]} if len(runs) else set()
        for v in values:
            if v not in have:
                shown = ", ".join(sorted(map(str, have))) or "none"
                raise F.SelectError(f"--select {axis}={v}: no run of the grid or store has it ({axis}: {shown})")
    return s, grid, F.select(runs, opts.select) if opts.select else runs


# ------------------------------------------------------------------------------------------- planning

def _by_model(df: pd.DataFrame) -> dict:
    return {k: g for k, g in df.groupby(["study", "model", "setup"], sort=False)} if len(df) else {}


def _top_budget(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at each (method, dataset)'s largest data budget in the grid (pending included)."""
    if runs.empty:
        return runs
    top = runs.groupby(["method", "dataset"])["budget_rank"].transform("max")
    return runs[runs["budget_rank"] == top]


def _budget_phrase(runs: pd.DataFrame) -> str:
    b = list(dict.fromkeys(runs["budget"]))
    return "at the full training split" if b == ["full"] else f"at {b[0]}" if len(b) == 1 else \
        "at each dataset's largest data budget"


LEVEL_TICK = {"sparsity": lambda v: f"{100 * v:g}%", "bits": lambda v: f"{v:g}", "ratio": lambda v: f"{v:g}×",
              "round": lambda v: f"{v:g}"}
DENSE_TICK = {"sparsity": "0% (dense)", "bits": "32 (float)", "ratio": "1× (dense)", "round": "0 (dense)"}


def level_ticks(levels: pd.DataFrame, lk: str) -> list[str]:
    """Tick labels of a level axis, dense first, with the level's unit (`levels`: rank, level, variant)."""
    fmt = LEVEL_TICK.get(lk)
    return [(DENSE_TICK.get(lk, "dense") if r == 0 else fmt(lv) if fmt and not math.isnan(lv) else v.split(" ")[-1])
            for r, lv, v in zip(levels["rank"], levels["level"], levels["variant"])]


def _chance(runs: pd.DataFrame) -> dict:
    """dataset -> 1 / its number of target classes (from the finished runs' per-class accuracy)."""
    k = runs.groupby("dataset")["classes"].max() if len(runs) and "classes" in runs else pd.Series(dtype=float)
    return {ds: 1.0 / c for ds, c in k.items() if c and not math.isnan(c)}


def method_colours(runs: pd.DataFrame) -> dict:
    """method -> its colour in every figure of the report (the grid's order of methods)."""
    from orchestrator.plots import colours

    methods = list(dict.fromkeys(runs["method"])) if len(runs) else []
    return dict(zip(methods, colours(len(methods))))


def plan(runs: pd.DataFrame, summary: pd.DataFrame, rel: pd.DataFrame, maps: pd.DataFrame, opts: Options,
         paired: Optional[pd.DataFrame] = None, extra: Optional[dict] = None) -> list[Entry]:
    """Every entry of the report. `extra`: classes (F.class_accuracy) and read_prompt (run_key -> safetensors
    bytes or None) for the paper's remaining figures (orchestrator.paper_figures)."""
    from orchestrator import cost as C
    from orchestrator import paper_figures as P2

    out: list[Entry] = []
    fams = F.families_of(runs) if len(runs) else []
    ece_metric = "ece" if opts.ece == "proper" else "ece_paper"
    kl_metric = "kl_incorrect" if opts.kl == "proper" else "kl_incorrect_paper"
    colour = method_colours(runs)
    chance = _chance(runs)
    paired = paired if paired is not None else C.pairs(runs)
    # each frame split once by (study, model, setup); a family then filters a small part by compression
    parts = {name: _by_model(df) for name, df in (("runs", runs), ("sum", summary), ("rel", rel), ("maps", maps))}

    def family(name: str, key: tuple, comp: str) -> pd.DataFrame:
        df = parts[name].get(key)
        return df[df["compression"].isin(["dense", comp])] if df is not None else {"runs": runs, "sum": summary,
                                                                                     "rel": rel, "maps": maps}[name].iloc[0:0]

    for study, model, setup, comp in fams:
        key = (study, model, setup)
        fam_runs, fam_sum = family("runs", key, comp), family("sum", key, comp)
        name = F.name_of(study, model, setup)
        head = f"{name}, {comp}" if comp != "dense" else f"{name}, dense only"
        lk = next((k for k in fam_runs["level_key"] if k), "")
        xlabel = F.LEVEL_NAMES.get(lk, "compression level") if comp != "dense" else ""
        methods = list(dict.fromkeys(fam_runs["method"]))
        multi_ds = fam_runs["dataset"].nunique() > 1
        if "accuracy" in opts.families:
            label, scale, what = F.METRIC_INFO["accuracy"]
            e = Entry("accuracy", f"{head}: test accuracy vs data budget, per method", fam_runs,
                      what=what + "; line: mean over seeds, band: its 95% interval (Student t; bootstrap with ≥ 5 "
                                  "seeds), dots: the seeds; dotted: chance (1 / classes); one y scale for all panels",
                      stem=f"accuracy/{slug(study, model, setup, comp)}")
            d = fam_sum[fam_sum["metric"] == "accuracy"]
            if fam_runs["budget"].nunique() < 2:
                e.skipped = f"one data budget ({fam_runs['budget'].iloc[0]}) in the grid: see Table 2"
            elif d.empty:
                e.skipped = "no finished run yet"
            else:
                panel = lambda df: (df["method"] + " · " + df["dataset"]) if multi_ds else df["method"]  # noqa: E731
                d = d.assign(panel=panel(d), _m=d["method"].map(methods.index)).sort_values("_m", kind="stable")
                pts = F.seed_values(fam_runs, "accuracy")
                pc = {p: chance.get(ds) for p, ds in zip(d["panel"], d["dataset"])}
                e.draw = ("lines_vs_budget", dict(data=d, points=pts.assign(panel=panel(pts)), title=e.title,
                                                  ylabel=label, scale=scale, chance=pc))
            out.append(e)
        for fam, metric in (("ece", ece_metric), ("confidence", "conf_correct"), ("kl", kl_metric)):
            if fam not in opts.families:
                continue
            label, scale, what = F.METRIC_INFO[metric]
            r = _top_budget(fam_runs)
            phrase = _budget_phrase(r)
            e = Entry(fam, f"{head}: {label} vs {F.LEVEL_SHORT.get(lk, 'compression level')} {phrase}", r,
                      what=f"{what}, {phrase}; line: mean over seeds, band: its 95% interval, dots: the seeds",
                      stem=f"{fam}/{slug(study, model, setup, comp)}")
            d = fam_sum.merge(r[["method", "dataset", "budget"]].drop_duplicates(), on=["method", "dataset", "budget"])
            d = d[d["metric"] == metric]
            if comp == "dense":
                e.skipped = "no compressed variant of this model"
            elif d.empty:
                e.skipped = "no finished run yet" if not (fam_runs["state"] == "ok").any() else \
                    f"no finished run with {metric} at the largest data budget"
            else:
                pts = F.seed_values(r, metric)
                levels = d.drop_duplicates("rank").sort_values("rank")
                e.draw = ("lines_vs_level", dict(data=d.assign(panel=d["dataset"]),
                                                 points=pts.assign(panel=pts["dataset"]), title=e.title, ylabel=label,
                                                 scale=scale, xlabel=xlabel, ticks=level_ticks(levels, lk),
                                                 colour=colour))
            out.append(e)
        if "reliability" in opts.families:
            # "for chosen variants": the methods --select names, else the family's most accurate one (mean accuracy
            # over its finished runs), which is what the paper's calibration figures use (ILM-VP)
            acc = fam_sum[fam_sum["metric"] == "accuracy"]
            chosen = methods if "method" in opts.select or acc.empty else \
                [acc.groupby("method", sort=False)["mean"].mean().idxmax()]
            for m in chosen:
                r = _top_budget(fam_runs[fam_runs["method"] == m])
                phrase = _budget_phrase(r)
                e = Entry("reliability", f"{head}, {m}: reliability {phrase}", r,
                          what=f"accuracy against confidence in 15 confidence bins (stored per run, pooled over "
                               f"seeds; marker area ∝ images in the bin), {phrase}",
                          stem=f"reliability/{slug(study, model, setup, comp, m)}")
                d = family("rel", key, comp).merge(r[["method", "dataset", "budget"]].drop_duplicates(), on=["method", "dataset", "budget"])
                if len(chosen) < len(methods):
                    e.note = (f"Drawn for {m}, the most accurate of {', '.join(methods)} here; --select method=NAME "
                              "draws others. ")
                if d.empty or not (d["count"] > 0).any():
                    e.skipped = "no finished run with stored reliability bins yet"
                else:
                    e.draw = ("reliability_diagrams", dict(data=d, title=e.title))
                out.append(e)
        if "mapping" in opts.families:
            out += _mapping_entries(fam_runs, family("maps", key, comp), study, model, setup, comp, head, colour)
        out += P2.entries(fam_runs, paired, study, model, setup, comp, head, opts.families, extra or {})
    if "table1" in opts.families:
        out.append(_table1(runs, summary, paired))
    if "table2" in opts.families:
        out += _table2(runs, summary, paired)
    if "table3" in opts.families:
        out += _table3(runs, summary)
    return out


def _mapping_entries(fam_runs, maps, study, model, setup, comp, head, colour) -> list[Entry]:
    """Fig. 1: one figure per model and compression, drawn for one dataset (the grid's first with label mappings;
    `--select dataset=NAME` draws another); every dataset's mappings go to the entry's Markdown and CSV files."""
    from workers.core.classnames import mapped_name, source_names, target_name_or_index

    r = _top_budget(fam_runs)
    phrase = _budget_phrase(r)
    e = Entry("mapping", f"{head}: label mapping {phrase}", r, stem=f"mapping/{slug(study, model, setup, comp)}",
              what=f"the source class each target class is mapped to, most common over seeds (k/n: chosen by k of n "
                   f"seeds; a / b: seeds split evenly), {phrase}")
    d = maps.merge(r[["method", "dataset", "budget"]].drop_duplicates(), on=["method", "dataset", "budget"])
    if d.empty:
        e.skipped = "no finished run with a label mapping (methods without one: clip_vp, lp, ff, reprogram)" \
            if (r["state"] == "ok").any() else "no finished run yet"
        return [e]
    n_targets = d.groupby("dataset")["target"].transform("max") + 1
    d = d.assign(source_label=[" / ".join(mapped_name(model, m, ds, int(x), int(k)) for x in str(tied).split(","))
                               for m, ds, tied, k in zip(d["method"], d["dataset"], d["tied"], n_targets)],
                 target_label=[target_name_or_index(t, ds) for t, ds in zip(d["target"], d["dataset"])])
    e.csv = d
    e.extra_md = _mapping_md(d)
    datasets = list(dict.fromkeys(d["dataset"]))
    ds = datasets[0]
    e.title = f"{head}, {ds}: label mapping {phrase}"
    if len(datasets) > 1:
        e.note = (f"Drawn for {ds}, the grid's first dataset; all {len(datasets)} datasets are in the Markdown and CSV "
                  "files (draw another with --select dataset=NAME --family mapping). ")
    d = d[d["dataset"] == ds]
    # a method whose every cell is a tie between seeds and whose mapping is the same in every variant (RLM: a
    # random mapping per seed) carries no information about compression: named, not drawn
    empty = [m for m, g in d.groupby("method", sort=False)
             if g["tied"].str.contains(",").all()
             and g.groupby("rank")["tied"].apply(tuple).nunique() == 1 and g["rank"].nunique() > 1]
    if empty:
        e.note += (f"Not drawn: {', '.join(empty)} (every target class a tie between seeds, the same in every "
                   "variant: a mapping that does not depend on the model); in the Markdown and CSV files. ")
        d = d[~d["method"].isin(empty)]
    if d.empty:
        e.skipped = "every method's mapping is a tie between seeds, the same in every variant (see the files)"
        e.draw = None
        return [e]
    comp_ranks = sorted(x for x in d["rank"].unique() if x > 0)
    if len(comp_ranks) > MAX_LEVELS:  # evenly spaced, the most compressed always in
        idx = [round(i * (len(comp_ranks) - 1) / (MAX_LEVELS - 1)) for i in range(MAX_LEVELS)]
        keep = [0] + [comp_ranks[i] for i in dict.fromkeys(idx)]
        e.note += f"{len(keep) - 1} of {len(comp_ranks)} compressed levels drawn. "
        d = d[d["rank"].isin(keep)]
    n = int(d["target"].max()) + 1
    if n > MAX_TARGETS:
        e.note += f"First {MAX_TARGETS} of {n} target classes drawn. "
        d = d[d["target"] < MAX_TARGETS]
    names, why = source_names(model)
    if names is None:
        e.note += why + ": source classes shown by index. "
    if target_name_or_index(0, ds).startswith("class "):
        e.note += "Target class names are not in the store: shown by index. "
    e.draw = ("label_map_table", dict(cells=d, title=e.title, note=e.note.strip(), colour=colour))
    return [e]


def _mapping_md(d: pd.DataFrame) -> str:
    """Every dataset's label mapping as Markdown: a table per dataset, rows target classes, columns method x variant."""
    methods = {m: i for i, m in enumerate(dict.fromkeys(d["method"]))}
    parts = []
    for ds, g in d.groupby("dataset", sort=False):
        cols = sorted({(methods[m], r, f"{m} · {v}") for m, r, v in zip(g["method"], g["rank"], g["variant"])})
        index = {(m, r): j for j, (_, r, name) in enumerate(cols) for m in [name.split(" · ")[0]]}
        rows: dict = {}
        for t, tl, m, r, src, a, n in zip(g["target"], g["target_label"], g["method"], g["rank"], g["source_label"],
                                          g["agree"], g["runs"]):
            rows.setdefault((t, tl), [""] * len(cols))[index[(m, r)]] = \
                src if a == n or " / " in src else f"{src} ({a}/{n})"
        table = pd.DataFrame([[tl, *cells] for (t, tl), cells in sorted(rows.items())],
                             columns=["target class", *(name for _, _, name in cols)])
        parts.append(f"**{ds}**\n\n{_md(table)}\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- tables

def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _verdict(mean: float, lo: float, hi: float, n: int) -> str:
    """The paper's drop categories (Low < 2, Moderate 2–10, High ≥ 10 points) for a paired accuracy cost
    (compressed − dense, fractions), said only where the interval supports it."""
    if math.isnan(mean):
        return ""
    if n < 2 or math.isnan(lo):
        return "too thin (1 seed)"
    drop, d_lo, d_hi = -100 * mean, -100 * hi, -100 * lo  # the drop and its interval, in points
    cat = lambda x: "High" if x >= 10 else "Moderate" if x >= 2 else "Low"  # noqa: E731
    if d_lo > 0:  # a resolved drop: its category, and the categories its interval spans when more than one
        return cat(drop) if cat(d_lo) == cat(d_hi) else f"{cat(drop)} (interval: {cat(d_lo)} to {cat(d_hi)})"
    if d_hi < 0:
        return "gain"
    return "Low" if d_hi < 2 else "not resolved (interval includes 0)"


def _best_methods(summary: pd.DataFrame) -> dict:
    """(study, model, setup) -> the method with the highest dense accuracy at the largest data budget (mean
    over datasets): the paper reads its tables for ILM-VP, its best method."""
    acc = F.largest_budget(summary[(summary["metric"] == "accuracy") & (summary["compression"] == "dense")])
    if acc.empty:
        return {}
    m = acc.groupby(["study", "model", "setup", "method"], sort=False)["mean"].mean().reset_index()
    return {k: g.loc[g["mean"].idxmax(), "method"] for k, g in m.groupby(["study", "model", "setup"], sort=False)}


def _table1(runs, summary, paired) -> Entry:
    from orchestrator import cost as C
    from workers.core.classnames import upstream_task

    e = Entry("table1", FAMILY_TITLES["table1"], runs, stem="tables/table1_drops",
              what="per compression level, the accuracy cost of the best method (the highest dense accuracy) at the "
                   "largest data budget: compressed − dense paired by seed, mean over datasets, points [95% interval]; "
                   "verdict on it, the paper's categories (Low < 2, Moderate 2–10, High ≥ 10 points of drop), said "
                   "only where the interval supports it; the drop averaged over every method, dataset and budget "
                   "is a column, not the verdict")
    t = F.table_drops(summary)
    best = _best_methods(summary)
    p = paired[paired["metric"] == "accuracy"] if len(paired) else paired
    if t.empty or p.empty:
        e.skipped = "needs a dense and a compressed variant of one model with finished runs in the same cells"
        return e
    p = p[[best.get(k) == m for k, m in zip(zip(p["study"], p["model"], p["setup"]), p["method"])]]
    top = F.largest_budget(p.drop_duplicates(["study", "model", "setup", "dataset", "method", "budget_rank"]))
    p = p.merge(top[["study", "model", "setup", "dataset", "method", "budget_rank"]])
    lv = C.summarize(p, ["study", "model", "setup", "compression", "level", "rank", "method", "budget"]) if len(p) \
        else pd.DataFrame(columns=["study", "model", "setup", "compression", "level", "rank"])
    t = t.merge(lv, on=["study", "model", "setup", "compression", "level", "rank"], how="left")
    order = {c: i for i, c in enumerate(pd.unique(runs["compression"]))}  # the grid's order
    t = t.assign(_o=t["compression"].map(order)).sort_values(["_o", "rank"], kind="stable").drop(columns="_o")
    lk = runs.drop_duplicates("compression").set_index("compression")["level_key"].to_dict()
    rows = []
    for _, r in t.iterrows():
        n = 0 if pd.isna(r.get("n")) else int(r["n"])
        up = "–" if math.isnan(r["upstream"]) else f"{100 * r['upstream']:.1f}"
        upd = "–" if math.isnan(r["upstream_dense"]) else f"{100 * r['upstream_dense']:.1f}"
        rows.append({**({"study": r["study"]} if t["study"].ne("").any() else {}),
                     "model": r["model"] + (f" ({r['setup']})" if r["setup"] else ""), "compression": r["compression"],
                     "category": C.category(r["compression"], lk.get(r["compression"], "")),
                     "level": r["variant"].split(" ")[-1],
                     "upstream accuracy, dense → compressed (%)":
                         "not measured" if up == upd == "–" else f"{upd} → {up} ({upstream_task(r['model'])})",
                     "best method, budget": f"{r['method']}, {r['budget']}" if n else "–",
                     "Δ accuracy (pts) [95%]": C.text(r["mean"], r["lo"], r["hi"], n) if n else "–",
                     "seeds": n, "verdict": _verdict(r["mean"], r["lo"], r["hi"], n) if n else "",
                     "mean drop, all cells (pts)": f"{100 * r['mean_drop']:.1f}".replace("-", "−"),
                     "cells": int(r["cells"])})
    shown = pd.DataFrame(rows)
    e.table_md, e.table_html = _md(shown), _html(shown)
    e.csv = t
    return e


def _cells(s: pd.DataFrame, cost: Optional[pd.DataFrame] = None) -> list[str]:
    """'mean ± std' in % per row; on a compressed row with a paired cost, 'Δ −x.x [lo, hi]' beside it."""
    out = []
    if cost is None or cost.empty:
        c = [math.nan] * len(s)
        cs = pd.DataFrame({"cost_mean": c, "cost_lo": c, "cost_hi": c, "cost_n": c})
    else:
        cs = s[F.KEYS].merge(cost, on=F.KEYS, how="left")
    for mean, std, cm, cl, ch, cn in zip(s["mean"], s["std"], cs["cost_mean"], cs["cost_lo"], cs["cost_hi"],
                                         cs["cost_n"]):
        t = f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
        if not math.isnan(cm):
            from orchestrator.cost import text

            t += f" (Δ {text(cm, cl, ch, int(cn))})"
        out.append(t)
    return out


def _headers(s: pd.DataFrame, col: str) -> dict:
    """Column header per value of `col`: the value, with the variant's size (non-zero parameters x bits per
    weight) and upstream accuracy on the model's source task."""
    from workers.core.classnames import upstream_task

    g = s.groupby(col, sort=False)
    out = {}
    for name, p, sp, b, u, m in zip(g.size().index, g["params"].first(), g["sparsity"].first(),
                                    g["weight_bits"].first(), g["upstream_accuracy"].first(), g["model"].first()):
        bits = []
        if not math.isnan(p):
            nz = p * (1 - (0 if math.isnan(sp) else sp))
            bits.append(f"{nz / 1e6:.2g}M non-zero × {32 if math.isnan(b) else int(b)} bit")
        if not math.isnan(u):
            bits.append(f"{upstream_task(m)} {100 * u:.1f}%")
        out[name] = name + (f" ({', '.join(bits)})" if bits else "")
    return out


def _pivot(s: pd.DataFrame, rows: list[str], col: str, cells: list[str], empty: str = "") -> pd.DataFrame:
    """Rows `rows` x columns `col` (both in order of appearance), each cell its text."""
    heads = _headers(s, col)
    wide = s.assign(_t=cells).set_index(rows + [col])["_t"].unstack(col)
    order = list(dict.fromkeys(zip(*(s[r] for r in rows)))) if len(rows) > 1 else list(dict.fromkeys(s[rows[0]]))
    wide = wide.reindex(index=order, columns=list(heads)).fillna(empty)
    out = wide.rename(columns=heads).reset_index()
    out.columns.name = None  # else to_html draws the pivot's column name as an empty extra column
    return out


def _html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0)


def _table2(runs, summary, paired) -> list[Entry]:
    from orchestrator import cost as C

    out = []
    acc = summary[summary["metric"] == "accuracy"]
    c = C.summarize(paired[paired["metric"] == "accuracy"]) if len(paired) else pd.DataFrame()
    c = c.rename(columns={"mean": "cost_mean", "lo": "cost_lo", "hi": "cost_hi", "n": "cost_n"}) if len(c) else None
    by_model = {k: g for k, g in acc.groupby(["study", "model", "setup"], sort=False)}
    for (study, model, setup), r in runs.groupby(["study", "model", "setup"], sort=False):
        name = F.name_of(study, model, setup)
        top = _top_budget(r)
        e = Entry("table2", f"{name}: accuracy {_budget_phrase(top)}, dense vs compressed", top,
                  stem=f"tables/table2_{slug(study, model, setup)}",
                  what=f"test accuracy (%) mean ± std over seeds, and (Δ: compressed − dense paired by seed, points "
                       f"[95% interval]), {_budget_phrase(top)}; header: non-zero parameters × bits per weight (the "
                       "model's size; sparsity counted over conv/linear weights) and upstream accuracy on the "
                       "model's source task where measured")
        out.append(e)
        if (r["compression"] == "dense").all():
            e.skipped = "no compressed variant of this model"
            continue
        s = by_model.get((study, model, setup), acc.iloc[0:0])
        s = s.merge(top[["method", "dataset", "budget"]].drop_duplicates(), on=["method", "dataset", "budget"])
        if s.empty:
            e.skipped = "no finished run yet"
            continue
        comp_order = {c: i for i, c in enumerate(dict.fromkeys(["dense", *r["compression"]]))}
        s = s.assign(_c=s["compression"].map(comp_order)).sort_values(["_c", "rank"], kind="stable").drop(columns="_c")
        shown = _pivot(s, ["dataset", "method"], "variant", _cells(s, c))
        e.table_md, e.table_html = _md(shown), _html(shown)
        e.csv = s if c is None else s.merge(c[F.KEYS + ["cost_mean", "cost_lo", "cost_hi", "cost_n"]], on=F.KEYS,
                                            how="left")
    return out


def _table3(runs, summary) -> list[Entry]:
    out = []
    acc = summary[summary["metric"] == "accuracy"]
    by_method = {k: g for k, g in acc.groupby(["study", "method"], sort=False)}
    for (study, m), r in runs.groupby(["study", "method"], sort=False):
        top = _top_budget(r)
        e = Entry("table3", f"{'[' + study + '] ' if study else ''}{m}: accuracy across models {_budget_phrase(top)}",
                  top, stem=f"tables/table3_{slug(study, m)}",
                  what=f"test accuracy (%) mean ± std over seeds, every model and variant side by side, {_budget_phrase(top)}")
        out.append(e)
        models = r[["model", "setup"]].drop_duplicates()
        if len(models) < 2:
            e.skipped = f"one model only ({models['model'].iloc[0]}) for this method"
            continue
        s = by_method.get((study, m), acc.iloc[0:0])
        s = s.merge(top[["method", "dataset", "budget"]].drop_duplicates(), on=["method", "dataset", "budget"])
        if s.empty:
            e.skipped = "no finished run yet"
            continue
        model_order = {k: i for i, k in enumerate(dict.fromkeys(zip(r["model"], r["setup"])))}
        s = s.assign(_o=[model_order.get(k, len(model_order)) for k in zip(s["model"], s["setup"])])
        s = s.sort_values(["_o", "rank"], kind="stable").drop(columns="_o")
        s = s.assign(column=[F.name_of("", a, b) + " " + v for a, b, v in zip(s["model"], s["setup"], s["variant"])])
        shown = _pivot(s, ["dataset"], "column", _cells(s), empty="–").rename(columns={"dataset": "task"})
        e.table_md, e.table_html = _md(shown), _html(shown)
        e.csv = s
    return out


# ------------------------------------------------------------------------------------------- writing

def caption(e: Entry) -> str:
    """One line: what was measured, on how many runs, what is missing."""
    if not e.caption:
        e.caption = _caption(e)
    return e.caption


def _caption(e: Entry) -> str:
    ok, pending, failed = e.counts()
    okr = e.runs[e.runs["state"] == "ok"] if len(e.runs) else e.runs
    if ok:
        per = okr.groupby(F.KEYS, dropna=False).size()
        runs = f"{ok} finished runs in {len(per)} configurations, {_n_text(per)} seeds each"
    else:
        runs = "No finished runs"
    missing = "nothing missing" if not (pending or failed) else \
        f"missing: {pending} pending, {failed} failed (listed below)"
    return f"{e.what[:1].upper() + e.what[1:]}. {runs}; {missing}." + (f" {e.note.strip()}" if e.note else "")


def _missing_lines(e: Entry) -> list[str]:
    m = e.runs[e.runs["state"] != "ok"] if len(e.runs) else e.runs
    lines = []
    for _, r in m.head(MAX_LISTED).iterrows():
        err = f": {str(r['error']).splitlines()[0][:160]}" if r["state"] == "failed" and isinstance(r.get("error"), str) else ""
        lines.append(f"{r['state']}: {r['model']} {r['variant']} {r['method']} {r['dataset']} {r['budget']} "
                     f"seed {int(r['seed'])}{err}")
    if len(m) > MAX_LISTED:
        lines.append(f"… and {len(m) - MAX_LISTED} more (all in missing.csv)")
    return lines


def workers() -> int:
    """Processes that draw figures: the CPUs this process may use (drawing is CPU-bound and independent)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _render_all(jobs: list, progress: Callable[[str], None]):
    """(index, files) per job (index, kind, kwargs, stem, formats); in a pool of fresh processes (spawn: no fork
    of pyarrow's threads) when there is more than a handful of figures and more than one CPU."""
    from orchestrator import plots as P

    n = min(workers(), len(jobs))
    if n < 2 or len(jobs) < 6:
        for k, (i, kind, kwargs, stem, formats) in enumerate(jobs):
            progress(f"[{k + 1}/{len(jobs)}] {stem.parent.name}/{stem.name}")
            yield i, P.render(kind, kwargs, stem, formats)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(i, stem, pool.submit(P.render, kind, kwargs, stem, formats)) for i, kind, kwargs, stem, formats in jobs]
        for k, (i, stem, f) in enumerate(futures):
            files = f.result()
            progress(f"[{k + 1}/{len(jobs)}] {stem.parent.name}/{stem.name}")
            yield i, files


def write(store: str, out: Path, opts: Options, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Write the report; returns {'index', 'written', 'skipped', 'seconds', ...}."""
    from orchestrator import cost as C
    from orchestrator.report import markdown, summary as summary_table

    t0 = time.perf_counter()
    s, grid, runs = load(store, opts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = F.summarize(runs)
    rel = F.reliability(runs) if "reliability" in opts.families else F.reliability(runs.iloc[0:0])
    maps = F.label_maps(runs) if "mapping" in opts.families else F.label_maps(runs.iloc[0:0])
    slim = runs[[c for c in RUN_COLUMNS if c in runs]]  # plan filters runs often: without lists
    paired = C.pairs(slim)
    cost = C.summarize(paired)
    classes = F.class_accuracy(runs) if "classwise" in opts.families else None
    entries = plan(slim, summary, rel, maps, opts, paired, extra={"classes": classes, "read_prompt": s.read_prompt})
    t_plan = time.perf_counter()
    formats = ("png", opts.vector)
    jobs = [(i, e.draw[0], e.draw[1], out / "figures" / e.stem, formats) for i, e in enumerate(entries) if e.draw]
    for i, files in _render_all(jobs, progress):
        entries[i].files = [str(p.relative_to(out)) for p in files]
        entries[i].draw = None
    for e in entries:
        if e.csv is not None:
            base = out / ("" if e.stem.startswith("tables/") else "figures") / e.stem
            base.parent.mkdir(parents=True, exist_ok=True)
            e.csv.to_csv(base.with_suffix(".csv"), index=False)
            e.files.append(str(base.with_suffix(".csv").relative_to(out)))
        if e.extra_md:
            p = out / "figures" / f"{e.stem}.md"
            p.write_text(f"**{e.title}**\n\n{caption(e)}\n\n{e.extra_md}")
            e.files.append(str(p.relative_to(out)))
        if e.table_md:
            p = out / f"{e.stem}.md"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"**{e.title}**\n\n{caption(e)}\n\n{e.table_md}\n")
            e.files.insert(0, str(p.relative_to(out)))
    t_draw = time.perf_counter()
    cost = cost[C.COLUMNS] if len(cost) else pd.DataFrame(columns=C.COLUMNS)
    cost.to_csv(out / "cost.csv", index=False)
    C.with_cost(summary, cost).to_csv(out / "summary.csv", index=False)
    findings = C.findings(cost)
    ok_rows = runs[runs["state"] == "ok"]
    (out / "tables").mkdir(exist_ok=True)
    (out / "tables" / "summary.md").write_text(markdown(summary_table(ok_rows), tuple(opts.metrics)) + "\n")
    missing = runs[runs["state"] != "ok"]
    cols = ["state", "study", "model", "compression", "level", "method", "dataset", "budget", "seed", "error", "run_key"]
    missing.reindex(columns=cols).to_csv(out / "missing.csv", index=False)
    info = {"store": str(store), "grid": grid.name, "select": opts.select, "ece": opts.ece, "kl": opts.kl,
            "ok": int((runs["state"] == "ok").sum()) if len(runs) else 0,
            "failed": int((runs["state"] == "failed").sum()) if len(runs) else 0,
            "pending": int((runs["state"] == "pending").sum()) if len(runs) else 0,
            "not_in_grid": int((~runs["in_grid"]).sum()) if len(runs) else 0}
    (out / "README.md").write_text(_index_md(entries, info, findings))
    (out / "index.html").write_text(_index_html(entries, info, findings))
    drawn = sum(1 for e in entries if not e.skipped)
    return {"index": str(out / "index.html"), "written": drawn, "skipped": len(entries) - drawn,
            "figures": sum(1 for e in entries if not e.skipped and not e.stem.startswith("tables/")),
            "rows": len(runs), "plan_s": t_plan - t0, "draw_s": t_draw - t_plan, "seconds": time.perf_counter() - t0,
            "entries": entries, **info}


def _header(info: dict) -> list[str]:
    sel = ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in info["select"].items()) or "none"
    lines = [f"Store `{info['store']}`, grid `{info['grid']}`: {info['ok']} finished, {info['failed']} failed, "
             f"{info['pending']} pending runs (selection: {sel}).",
             f"ECE: {'proper (`ece`)' if info['ece'] == 'proper' else 'the paper code variant (`ece_paper`)'}; "
             f"KL: {'KL(p ‖ U) (`kl_incorrect`)' if info['kl'] == 'proper' else 'the paper code variant (`kl_incorrect_paper`)'}. "
             "Only finished runs are averaged; runs that differ in any setting are never averaged as seeds.",
             "Every pending and failed run: [missing.csv](missing.csv); all means, stds and intervals: "
             "[summary.csv](summary.csv); every paired cost: [cost.csv](cost.csv); "
             "the Markdown tables of `vpgrid report`: [tables/summary.md](tables/summary.md)."]
    if info["not_in_grid"]:
        lines.append(f"{info['not_in_grid']} stored rows belong to runs no longer in the grid; they are included.")
    return lines


def _findings_md(findings) -> list[str]:
    intro, groups = findings
    parts = ["## Findings", "", *intro, ""]
    for head, lines in groups:
        parts += [f"**{head}**", "", *[f"- {x}" for x in lines], ""]
    return parts


def _index_md(entries: list[Entry], info: dict, findings=([], [])) -> str:
    parts = ["# vpgrid report", "", *_findings_md(findings), "## About this report", "",
             *[f"{x}  " for x in _header(info)], "", "Manual: what each section, figure and table shows, and the "
             "definitions of the paired cost and its interval: docs/report.md in the vpgrid repository.", ""]
    for fam in FAMILIES:
        es = [e for e in entries if e.family == fam]
        if not es:
            continue
        parts += [f"## {FAMILY_TITLES[fam]}", ""]
        for e in es:
            if e.title != FAMILY_TITLES[fam]:
                parts += [f"### {e.title}", ""]
            if e.skipped:
                parts.append(f"*Not drawn: {e.skipped}.* {caption(e)}")
            else:
                parts.append(caption(e))
                parts.append("")
                for f in e.files:
                    if f.endswith(".png"):
                        parts.append(f"![{e.title}]({f})")
                if e.table_md:
                    parts += ["", e.table_md]
                parts.append("")
                parts.append("Files: " + ", ".join(f"[{Path(f).suffix[1:]}]({f})" for f in e.files))
            miss = _missing_lines(e)
            if miss:
                parts += ["", "<details><summary>missing runs</summary>", "", *[f"- {x}" for x in miss], "", "</details>"]
            parts.append("")
    return "\n".join(parts) + "\n"


def _index_html(entries: list[Entry], info: dict, findings=([], [])) -> str:
    h = html.escape
    intro, groups = findings
    body = ["<h1>vpgrid report</h1>", '<section id="findings" class="findings"><h2>Findings</h2>',
            *[f"<p>{_md_links(h(x))}</p>" for x in intro]]
    for head, lines in groups:
        body.append(f"<h3>{h(head)}</h3><ul>" + "".join(f"<li>{h(x)}</li>" for x in lines) + "</ul>")
    body += ["</section>", "<h2>About this report</h2>", *[f"<p>{_md_links(h(x))}</p>" for x in _header(info)],
             "<p>Manual: docs/report.md in the vpgrid repository (each section, figure and table; the paired cost "
             "and its interval).</p>", "<nav><ul>"]
    fams = [f for f in FAMILIES if any(e.family == f for e in entries)]
    body += [f'<li><a href="#{f}">{h(FAMILY_TITLES[f])}</a></li>' for f in fams] + ["</ul></nav>"]
    for fam in fams:
        body.append(f'<h2 id="{fam}">{h(FAMILY_TITLES[fam])}</h2><div class="grid">')
        for e in (x for x in entries if x.family == fam):
            wide = " wide" if e.table_html or e.family == "mapping" else ""
            body.append(f'<section class="entry{wide}">')
            if e.title != FAMILY_TITLES[fam]:
                body.append(f"<h3>{h(e.title)}</h3>")
            if e.skipped:
                body.append(f"<p><em>Not drawn: {h(e.skipped)}.</em> {h(caption(e))}</p>")
            else:
                body.append(f"<p>{h(caption(e))}</p>")
                body += [f'<a href="{h(f)}"><img src="{h(f)}" alt="{h(e.title)}"></a>' for f in e.files
                         if f.endswith(".png")]
                if e.table_html:
                    body.append(f'<div class="table">{e.table_html}</div>')
                body.append("<p>Files: " + ", ".join(f'<a href="{h(f)}">{h(Path(f).suffix[1:])}</a>' for f in e.files) + "</p>")
            miss = _missing_lines(e)
            if miss:
                body.append("<details><summary>missing runs</summary><ul>" + "".join(f"<li>{h(x)}</li>" for x in miss)
                            + "</ul></details>")
            body.append("</section>")
        body.append("</div>")
    style = ("body{font-family:sans-serif;max-width:1800px;margin:2em auto;padding:0 1em;color:#222}"
             ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1.5em}"
             ".wide{grid-column:1/-1}.findings{background:#f6f6f6;padding:0.5em 1.5em;border-radius:6px}"
             "img{max-width:100%;border:1px solid #ddd}.table{overflow-x:auto}"
             "table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
             "th{background:#f0f0f0}section.entry p{font-size:14px}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vpgrid report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def _md_links(text: str) -> str:
    """[name](href) and `code` in the header lines, as HTML."""
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
