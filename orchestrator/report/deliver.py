"""`vpgrid report STORE --out DIR`: every figure and table that the store's axes allow, and an index.

Reads the store into the run table (orchestrator.report.runs), aggregates it (aggregate, cost), plans the entries
(plan), draws the figures in a pool of processes (plots), writes each entry's files, summary.csv, cost.csv,
missing.csv and the index (index). Pending and failed runs are counted in each caption and listed (and all of
them in DIR/missing.csv), never averaged in.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


from orchestrator.report import aggregate as A
from orchestrator.report import cost as C
from orchestrator.report.entry import Options, caption, load
from orchestrator.report.index import index_html, index_md
from orchestrator.report.names import METRIC_INFO
from orchestrator.report.plan import plan
from orchestrator.report.summary import markdown, summary as summary_table

# The run table's columns that planning reads: without its lists, as plan filters runs often.
RUN_COLUMNS = ["run_key", "state", "in_grid", "study", "model", "setup", "compression", "level", "level_key", "variant",
               "rank", "method", "dataset", "shots", "budget", "budget_rank", "seed", "error", "classes",
               *METRIC_INFO, "best_epoch_accuracy", "prompt_path"]


def workers() -> int:
    """Processes that draw figures: the CPUs this process may use (drawing is CPU-bound and independent)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _render_all(jobs: list, progress: Callable[[str], None]):
    """(index, files) per job (index, kind, kwargs, stem, formats); in a pool of fresh processes (spawn: no fork
    of pyarrow's threads) when there is more than a handful of figures and more than one CPU."""
    from orchestrator.report import plots as P

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
    t0 = time.perf_counter()
    s, grid, runs = load(store, opts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = A.summarize(runs)
    rel = A.reliability(runs) if "reliability" in opts.families else A.reliability(runs.iloc[0:0])
    maps = A.label_maps(runs) if "mapping" in opts.families else A.label_maps(runs.iloc[0:0])
    slim = runs[[c for c in RUN_COLUMNS if c in runs]]  # plan filters runs often: without lists
    paired = C.pairs(slim)
    classes = A.class_accuracy(runs) if "classwise" in opts.families else None
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
    cost = C.cost(paired)
    cost.to_csv(out / "cost.csv", index=False)
    C.with_cost(summary, cost).to_csv(out / "summary.csv", index=False)
    findings = C.findings(cost)
    (out / "tables").mkdir(exist_ok=True)
    (out / "tables" / "summary.md").write_text(markdown(summary_table(runs), tuple(opts.metrics)) + "\n")
    missing = runs[runs["state"] != "ok"]
    cols = ["state", "study", "model", "compression", "level", "method", "dataset", "budget", "seed", "error", "run_key"]
    missing.reindex(columns=cols).to_csv(out / "missing.csv", index=False)
    info = {"store": str(store), "grid": grid.name, "select": opts.select, "ece": opts.ece, "kl": opts.kl,
            "ok": int((runs["state"] == "ok").sum()) if len(runs) else 0,
            "failed": int((runs["state"] == "failed").sum()) if len(runs) else 0,
            "pending": int((runs["state"] == "pending").sum()) if len(runs) else 0,
            "not_in_grid": int((~runs["in_grid"]).sum()) if len(runs) else 0}
    (out / "README.md").write_text(index_md(entries, info, findings))
    (out / "index.html").write_text(index_html(entries, info, findings))
    drawn = sum(1 for e in entries if not e.skipped)
    return {"index": str(out / "index.html"), "written": drawn, "skipped": len(entries) - drawn,
            "figures": sum(1 for e in entries if not e.skipped and not e.stem.startswith("tables/")),
            "rows": len(runs), "plan_s": t_plan - t0, "draw_s": t_draw - t_plan, "seconds": time.perf_counter() - t0,
            "entries": entries, **info}

