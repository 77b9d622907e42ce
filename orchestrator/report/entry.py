"""What every part of `vpgrid report --out` shares: the options, an `Entry` of the index (one figure or table, or
one that could not be made, with why), its caption, file stems, the store read into the run table, and frames
written as Markdown or HTML tables. pandas only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from orchestrator.report import runs as R
from orchestrator.report.names import FAMILIES, KEYS

MAX_LISTED = 25  # missing runs listed under each item; all of them are in missing.csv


@dataclass
class Options:
    """What `vpgrid report --out` draws: its --select, --ece, --kl, --family, --vector and --metric."""

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
    runs = R.run_table(s.frame(), specs, study_of)
    for axis, values in opts.select.items():  # a value that selects nothing is a usage error, not an empty report
        have = {R.axis_value(axis, v) for v in runs[axis]} if len(runs) else set()
        for v in values:
            if v not in have:
                shown = ", ".join(sorted(map(str, have))) or "none"
                raise R.SelectError(f"--select {axis}={v}: no run of the grid or store has it ({axis}: {shown})")
    return s, grid, R.select(runs, opts.select) if opts.select else runs


def top_budget(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at each (method, dataset)'s largest data budget in the grid (pending included)."""
    if runs.empty:
        return runs
    top = runs.groupby(["method", "dataset"])["budget_rank"].transform("max")
    return runs[runs["budget_rank"] == top]


def budget_phrase(runs: pd.DataFrame) -> str:
    """How a caption names the budgets of `runs`: 'at the full training split', 'at 10-shot', ..."""
    b = list(dict.fromkeys(runs["budget"]))
    return "at the full training split" if b == ["full"] else f"at {b[0]}" if len(b) == 1 else \
        "at each dataset's largest data budget"


def md_table(df: pd.DataFrame) -> str:
    """A frame as a Markdown table, every cell as text (| escaped)."""
    cols = list(df.columns)
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0)


def caption(e: Entry) -> str:
    """One line: what was measured, on how many runs, what is missing."""
    if not e.caption:
        e.caption = _caption(e)
    return e.caption


def _caption(e: Entry) -> str:
    ok, pending, failed = e.counts()
    okr = e.runs[e.runs["state"] == "ok"] if len(e.runs) else e.runs
    if ok:
        per = okr.groupby(KEYS, dropna=False).size()
        runs = f"{ok} finished runs in {len(per)} configurations, {_n_text(per)} seeds each"
    else:
        runs = "No finished runs"
    missing = "nothing missing" if not (pending or failed) else \
        f"missing: {pending} pending, {failed} failed (listed below)"
    return f"{e.what[:1].upper() + e.what[1:]}. {runs}; {missing}." + (f" {e.note.strip()}" if e.note else "")


def missing_lines(e: Entry) -> list[str]:
    """The pending and failed runs of an entry, one line each (the first MAX_LISTED), failures with their error."""
    m = e.runs[e.runs["state"] != "ok"] if len(e.runs) else e.runs
    lines = []
    for _, r in m.head(MAX_LISTED).iterrows():
        err = f": {str(r['error']).splitlines()[0][:160]}" if r["state"] == "failed" and isinstance(r.get("error"), str) else ""
        lines.append(f"{r['state']}: {r['model']} {r['variant']} {r['method']} {r['dataset']} {r['budget']} "
                     f"seed {int(r['seed'])}{err}")
    if len(m) > MAX_LISTED:
        lines.append(f"… and {len(m) - MAX_LISTED} more (all in missing.csv)")
    return lines

