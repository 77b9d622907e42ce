"""The paper's tables as entries of `vpgrid report --out`: Table 1 (the accuracy cost per architecture and
compression level, with the paper's drop categories said only where the interval supports them), Table 2 (dense
vs compressed per model at the largest data budget) and Tables 3–4 (every model side by side). pandas only.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from orchestrator.report import aggregate as A
from orchestrator.report import cost as C
from orchestrator.report.entry import Entry, budget_phrase, html_table, md_table, slug, top_budget
from orchestrator.report.names import FAMILY_TITLES, KEYS, name_of


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
    acc = A.largest_budget(summary[(summary["metric"] == "accuracy") & (summary["compression"] == "dense")])
    if acc.empty:
        return {}
    m = acc.groupby(["study", "model", "setup", "method"], sort=False)["mean"].mean().reset_index()
    return {k: g.loc[g["mean"].idxmax(), "method"] for k, g in m.groupby(["study", "model", "setup"], sort=False)}


def table1(runs, summary, paired) -> Entry:
    from workers.core.classnames import upstream_task

    e = Entry("table1", FAMILY_TITLES["table1"], runs, stem="tables/table1_drops",
              what="per compression level, the accuracy cost of the best method (the highest dense accuracy) at the "
                   "largest data budget: compressed − dense paired by seed, mean over datasets, points [95% interval]; "
                   "verdict on it, the paper's categories (Low < 2, Moderate 2–10, High ≥ 10 points of drop), said "
                   "only where the interval supports it; the drop averaged over every method, dataset and budget "
                   "is a column, not the verdict")
    t = A.table_drops(summary)
    best = _best_methods(summary)
    p = paired[paired["metric"] == "accuracy"] if len(paired) else paired
    if t.empty or p.empty:
        e.skipped = "needs a dense and a compressed variant of one model with finished runs in the same cells"
        return e
    p = p[[best.get(k) == m for k, m in zip(zip(p["study"], p["model"], p["setup"]), p["method"])]]
    top = A.largest_budget(p.drop_duplicates(["study", "model", "setup", "dataset", "method", "budget_rank"]))
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
    e.table_md, e.table_html = md_table(shown), html_table(shown)
    e.csv = t
    return e


def _cells(s: pd.DataFrame, cost: Optional[pd.DataFrame] = None) -> list[str]:
    """'mean ± std' in % per row; on a compressed row with a paired cost, 'Δ −x.x [lo, hi]' beside it."""
    out = []
    if cost is None or cost.empty:
        c = [math.nan] * len(s)
        cs = pd.DataFrame({"cost_mean": c, "cost_lo": c, "cost_hi": c, "cost_n": c})
    else:
        cs = s[KEYS].merge(cost, on=KEYS, how="left")
    for mean, std, cm, cl, ch, cn in zip(s["mean"], s["std"], cs["cost_mean"], cs["cost_lo"], cs["cost_hi"],
                                         cs["cost_n"]):
        t = f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
        if not math.isnan(cm):
            t += f" (Δ {C.text(cm, cl, ch, int(cn))})"
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


def table2(runs, summary, paired) -> list[Entry]:

    out = []
    acc = summary[summary["metric"] == "accuracy"]
    c = C.summarize(paired[paired["metric"] == "accuracy"]) if len(paired) else pd.DataFrame()
    c = c.rename(columns={"mean": "cost_mean", "lo": "cost_lo", "hi": "cost_hi", "n": "cost_n"}) if len(c) else None
    by_model = {k: g for k, g in acc.groupby(["study", "model", "setup"], sort=False)}
    for (study, model, setup), r in runs.groupby(["study", "model", "setup"], sort=False):
        name = name_of(study, model, setup)
        top = top_budget(r)
        e = Entry("table2", f"{name}: accuracy {budget_phrase(top)}, dense vs compressed", top,
                  stem=f"tables/table2_{slug(study, model, setup)}",
                  what=f"test accuracy (%) mean ± std over seeds, and (Δ: compressed − dense paired by seed, points "
                       f"[95% interval]), {budget_phrase(top)}; header: non-zero parameters × bits per weight (the "
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
        e.table_md, e.table_html = md_table(shown), html_table(shown)
        e.csv = s if c is None else s.merge(c[KEYS + ["cost_mean", "cost_lo", "cost_hi", "cost_n"]], on=KEYS,
                                            how="left")
    return out


def table3(runs, summary) -> list[Entry]:
    out = []
    acc = summary[summary["metric"] == "accuracy"]
    by_method = {k: g for k, g in acc.groupby(["study", "method"], sort=False)}
    for (study, m), r in runs.groupby(["study", "method"], sort=False):
        top = top_budget(r)
        e = Entry("table3", f"{'[' + study + '] ' if study else ''}{m}: accuracy across models {budget_phrase(top)}",
                  top, stem=f"tables/table3_{slug(study, m)}",
                  what=f"test accuracy (%) mean ± std over seeds, every model and variant side by side, {budget_phrase(top)}")
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
        s = s.assign(column=[name_of("", a, b) + " " + v for a, b, v in zip(s["model"], s["setup"], s["variant"])])
        shown = _pivot(s, ["dataset"], "column", _cells(s), empty="–").rename(columns={"dataset": "task"})
        e.table_md, e.table_html = md_table(shown), html_table(shown)
        e.csv = s
    return out

