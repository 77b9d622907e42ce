"""Planning `vpgrid report --out`: every figure and table that the run table's axes allow, as entries of the index.

A figure family is drawn once per model (with its setup, in its study) and compression, so a user's own model,
compression or dataset appears with no change here. What cannot be drawn is an entry with the reason. The paper's
remaining figures are planned by orchestrator.report.paper_figures, its tables by orchestrator.report.paper_tables.
pandas only: an entry names its figure kind and data, and orchestrator.report.plots draws it.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from orchestrator.report import aggregate as A
from orchestrator.report import cost as C
from orchestrator.report import paper_figures, paper_tables
from orchestrator.report.entry import Entry, Options, budget_phrase, md_table, slug, top_budget
from orchestrator.report.names import LEVEL_NAMES, LEVEL_SHORT, METRIC_INFO, name_of

MAX_TARGETS = 30  # target classes drawn in a label-mapping figure; all are in its CSV
MAX_LEVELS = 3  # compressed levels drawn beside dense in a label-mapping figure


def families_of(runs: pd.DataFrame) -> list[tuple]:
    """(study, model, setup, compression family) of the run table: each non-dense compression of a model
    (drawn with that model's dense rows), or 'dense' for a model that has no other."""
    out = []
    for (study, model, setup), g in runs.groupby(["study", "model", "setup"], sort=False):
        comps = [c for c in dict.fromkeys(g["compression"]) if c != "dense"]
        out += [(study, model, setup, c) for c in (comps or ["dense"])]
    return out


def _by_model(df: pd.DataFrame) -> dict:
    return {k: g for k, g in df.groupby(["study", "model", "setup"], sort=False)} if len(df) else {}


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
    from orchestrator.report.draw import colours

    methods = list(dict.fromkeys(runs["method"])) if len(runs) else []
    return dict(zip(methods, colours(len(methods))))


def plan(runs: pd.DataFrame, summary: pd.DataFrame, rel: pd.DataFrame, maps: pd.DataFrame, opts: Options,
         paired: Optional[pd.DataFrame] = None, extra: Optional[dict] = None) -> list[Entry]:
    """Every entry of the report. `extra`: classes (aggregate.class_accuracy) and read_prompt (run_key ->
    safetensors bytes or None) for the paper's remaining figures (paper_figures)."""
    out: list[Entry] = []
    fams = families_of(runs) if len(runs) else []
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
        name = name_of(study, model, setup)
        head = f"{name}, {comp}" if comp != "dense" else f"{name}, dense only"
        lk = next((k for k in fam_runs["level_key"] if k), "")
        xlabel = LEVEL_NAMES.get(lk, "compression level") if comp != "dense" else ""
        methods = list(dict.fromkeys(fam_runs["method"]))
        multi_ds = fam_runs["dataset"].nunique() > 1
        if "accuracy" in opts.families:
            label, scale, what = METRIC_INFO["accuracy"]
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
                pts = A.seed_values(fam_runs, "accuracy")
                pc = {p: chance.get(ds) for p, ds in zip(d["panel"], d["dataset"])}
                e.draw = ("lines_vs_budget", dict(data=d, points=pts.assign(panel=panel(pts)), title=e.title,
                                                  ylabel=label, scale=scale, chance=pc))
            out.append(e)
        for fam, metric in (("ece", ece_metric), ("confidence", "conf_correct"), ("kl", kl_metric)):
            if fam not in opts.families:
                continue
            label, scale, what = METRIC_INFO[metric]
            r = top_budget(fam_runs)
            phrase = budget_phrase(r)
            e = Entry(fam, f"{head}: {label} vs {LEVEL_SHORT.get(lk, 'compression level')} {phrase}", r,
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
                pts = A.seed_values(r, metric)
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
                r = top_budget(fam_runs[fam_runs["method"] == m])
                phrase = budget_phrase(r)
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
        out += paper_figures.entries(fam_runs, paired, study, model, setup, comp, head, opts.families, extra or {})
    if "table1" in opts.families:
        out.append(paper_tables.table1(runs, summary, paired))
    if "table2" in opts.families:
        out += paper_tables.table2(runs, summary, paired)
    if "table3" in opts.families:
        out += paper_tables.table3(runs, summary)
    return out


def _mapping_entries(fam_runs, maps, study, model, setup, comp, head, colour) -> list[Entry]:
    """Fig. 1: one figure per model and compression, drawn for one dataset (the grid's first with label mappings;
    `--select dataset=NAME` draws another); every dataset's mappings go to the entry's Markdown and CSV files."""
    from workers.core.classnames import mapped_name, source_names, target_name_or_index

    r = top_budget(fam_runs)
    phrase = budget_phrase(r)
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
        parts.append(f"**{ds}**\n\n{md_table(table)}\n")
    return "\n".join(parts)

