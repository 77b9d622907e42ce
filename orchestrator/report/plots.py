"""Drawing the report's figures: thin functions that draw exactly the frame they are given (planned by
orchestrator.report.plan) and save it, and `render`, which a process pool runs per figure. matplotlib (Agg) only;
no aggregation happens here."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.ticker import MaxNLocator

from orchestrator.report import plots_paper
from orchestrator.report.draw import MARKERS, MAX_COLS, MIN_W, PANEL_H, PANEL_W, level_colour, plt, save, short


def _legend_cols(width: float, labels: list[str]) -> int:
    per = max((len(x) for x in labels), default=1) * 0.075 + 0.6  # inches per entry at the legend's font size
    return max(1, min(len(labels), int(width // per)))


def _figure(n: int, title: str, sub: str, labels: list[str], ticks: list[str] = (), share_y: bool = False):
    """A figure of n panels (at most MAX_COLS a row) with fixed margins: the title on top, the legend (`labels`)
    at the bottom. Margins are computed, not solved: constrained layout cost a third of the drawing time. Panels
    share their x axis (and y with `share_y`): only the outer panels carry tick labels and axis labels
    (`_outer`), which halves the text to lay out and reads better. `ticks`: the x tick labels (their angle and
    length size the bottom margin)."""
    cols = min(MAX_COLS, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    width = max(PANEL_W * cols, MIN_W)
    lines = textwrap.wrap(title, int(width * 12)) + textwrap.wrap(sub, int(width * 13))  # characters per inch
    leg_rows = math.ceil(len(labels) / _legend_cols(width, labels)) if labels else 0
    tick_h = max((len(t) for t in ticks), default=0) * CHAR_W * math.sin(math.radians(_angle(ticks)))
    top, bottom = 0.25 + 0.19 * len(lines) + 0.25, 0.15 + 0.2 * leg_rows + 0.6 + tick_h
    gap_w, gap_h = (0.3 if share_y else 0.8), 0.45  # room for y tick labels; for the panel title below
    height = (PANEL_H - 0.6) * rows + gap_h * (rows - 1) + top + bottom
    fig = plt.figure(figsize=(width, height))
    left, right = 0.75, 0.2
    ax_w = (width - left - right - gap_w * (cols - 1)) / cols
    ax_h = (height - top - bottom - gap_h * (rows - 1)) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / ax_w, hspace=gap_h / ax_h)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    fig._vp_cols = cols  # read by _outer
    fig.suptitle("\n".join(lines), y=1 - 0.12 / height, va="top")
    return fig, axes


def _n_text(ns) -> str:
    ns = sorted({int(x) for x in ns})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def _legend(fig, handles, labels) -> None:
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.08 / fig.get_figheight()),
                   ncol=_legend_cols(fig.get_figwidth(), labels), frameon=False)


CHAR_W = 0.065  # inches per character of a tick label (8 pt)


def _angle(labels) -> int:
    """Degrees to turn x tick labels so that they do not overlap in a panel (about PANEL_W - 0.8 inches wide)."""
    room = PANEL_W - 1.0
    if sum(len(x) for x in labels) * CHAR_W + 0.1 * len(labels) <= room:
        return 0
    return 45 if len(labels) * 0.2 <= room else 90


def _outer(fig, axes: list, xlabel: str, ylabel: str, ticks: Optional[list] = None, share_y: bool = False) -> None:
    """Axis labels on the outer panels only: x below the panels with none under them, y on the first column.
    `ticks`: categorical x tick labels at 0, 1, ... (every panel gets the same x range). Panels above others get
    no x ticks at all: a tick is the costliest artist matplotlib makes (~2 ms each, 13 per panel for LTH rounds)."""
    cols, n = fig._vp_cols, len(axes)
    for i, ax in enumerate(axes):
        if ticks is not None:
            ax.set_xlim(-0.5, len(ticks) - 0.5)
        if i + cols >= n:
            ax.set_xlabel(xlabel)
            if ticks is not None:
                _ticks(ax, ticks)
        else:
            ax.set_xticks([])
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        elif share_y:
            ax.tick_params(labelleft=False)
        ax.grid(axis="y", alpha=0.3)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))  # fewer ticks: less to make and draw


def _ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)))
    angle = _angle(labels)
    ax.set_xticklabels(labels, rotation=angle, ha="right" if angle == 45 else "center",
                       rotation_mode="anchor" if angle == 45 else "default")


def render(kind: str, kwargs: dict, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Draw `KINDS[kind](**kwargs)` and save it as stem.<format> for each format: a plain function of picklable
    arguments, so a process pool can run it."""
    return save(KINDS[kind](**kwargs), Path(stem), tuple(formats))


SEEDS_SUB = "line: mean over seeds; band: 95% interval of the mean (Student t; bootstrap with ≥ 5 seeds); dots: seeds"


def _variant_colours(data: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Variants dense first, then least -> most compressed, coloured by level (level_colour)."""
    variants = data.drop_duplicates("variant").sort_values("rank", kind="stable")
    names = variants["variant"].tolist()
    n = int(variants["rank"].max()) if len(variants) else 0
    return names, {v: level_colour(int(r), n) for v, r in zip(names, variants["rank"])}


def _share_y(axes, floor: Optional[float] = None, ceil: Optional[float] = None) -> None:
    """One y range for every panel of a figure (so gaps read the same in each), within [floor, ceil]."""
    los, his = zip(*(ax.get_ylim() for ax in axes)) if axes else ((0,), (1,))
    lo, hi = min(los), max(his)
    lo, hi = max(lo, floor) if floor is not None else lo, min(hi, ceil) if ceil is not None else hi
    for ax in axes:
        ax.set_ylim(lo, hi)


def _lines(data: pd.DataFrame, points: pd.DataFrame, title: str, key: str, names: list, labels: list[str], order: str,
           ticks: list[str], xlabel: str, ylabel: str, draw, scale: float, chance: Optional[dict] = None):
    """What both line figures share: a panel per value of `panel` (one y scale for all), a line per value of
    `key` (`names`, in order) drawn by draw(ax, i, name, rows sorted by `order`, its seeds) -> its handle; a
    dotted chance line where `chance` has the panel; the legend lists what was drawn."""
    panels = list(dict.fromkeys(data["panel"]))
    chance = chance or {}
    extra = ["chance (1 / classes)"] if any(chance.get(p) for p in panels) else []
    fig, axes = _figure(len(panels), title, SEEDS_SUB, labels + extra, ticks)
    handles = {}
    by = {k: g for k, g in data.groupby(["panel", key], sort=False)}
    seeds = {k: g for k, g in points.groupby(["panel", key], sort=False)} if len(points) else {}
    for ax, p in zip(axes, panels):
        for i, name in enumerate(names):
            line = by.get((p, name))
            if line is not None:
                handles[name] = draw(ax, i, name, line.sort_values(order), seeds.get((p, name)))
        if chance.get(p):
            handles["chance"] = ax.axhline(scale * chance[p], ls=":", color="0.35", lw=1.2)
        ax.set_title(p, y=1.0, pad=4)  # a fixed place: matplotlib's automatic one measured every tick label
    _share_y(axes, 0.0, 100.0 if scale == 100 else None)
    _outer(fig, axes, xlabel, ylabel, ticks)
    shown = [n for n in names if n in handles] + (["chance"] if "chance" in handles else [])
    text = dict(zip(names, labels), chance="chance (1 / classes)")
    _legend(fig, [handles[n] for n in shown], [text[n] for n in shown])
    return fig


def _band(ax, x, line, scale, colour, seeds, seed_x, marker):
    y = scale * line["mean"].to_numpy()
    lo, hi = scale * line["lo"].to_numpy(), scale * line["hi"].to_numpy()
    (handle,) = ax.plot(x, y, marker=marker, color=colour, lw=1.5, ms=4)
    ax.fill_between(x, pd.Series(lo).fillna(pd.Series(y)), pd.Series(hi).fillna(pd.Series(y)), color=colour,
                    alpha=0.15, lw=0)
    if seeds is not None and len(seeds):
        ax.scatter(seed_x(seeds), scale * seeds["value"].to_numpy(), s=7, color=colour, alpha=0.35, lw=0, zorder=1)
    return handle


def lines_vs_budget(data: pd.DataFrame, points: pd.DataFrame, title: str, ylabel: str, scale: float,
                    chance: Optional[dict] = None):
    """A panel per `panel` (method · dataset); x: data budget (categorical, ascending, 'full' last); a line per
    variant (dense black, then the level ramp); band: 95% interval (`lo`, `hi`); dots: the seeds (`points`:
    panel, variant, budget, value). `data`: summarize() rows with lo, hi and panel."""
    budgets = data.drop_duplicates("budget").sort_values("budget_rank")["budget"].tolist()
    xpos = {b: i for i, b in enumerate(budgets)}
    variants, colour = _variant_colours(data)
    labels = [f"{v} ({_n_text(data.loc[data['variant'] == v, 'n'])})" for v in variants]

    def draw(ax, i, v, line, seeds):
        return _band(ax, [xpos[b] for b in line["budget"]], line, scale, colour[v], seeds,
                     lambda s: [xpos[b] + 0.06 * (i - 1) for b in s["budget"]], MARKERS[i % len(MARKERS)])

    return _lines(data, points, title, "variant", variants, labels, "budget_rank",
                  [b.replace("-shot", "") for b in budgets], "training images per class", ylabel, draw, scale, chance)


def lines_vs_level(data: pd.DataFrame, points: pd.DataFrame, title: str, ylabel: str, scale: float, xlabel: str,
                   ticks: list[str], colour: dict):
    """A panel per `panel` (dataset); x: dense then each level, least -> most compressed (categorical, `ticks`);
    a line per method in its report-wide colour, dodged sideways; band: 95% interval; dots: the seeds."""
    ranks = sorted(data["rank"].unique())
    methods = list(dict.fromkeys(data["method"]))
    labels = [f"{m} ({_n_text(data.loc[data['method'] == m, 'n'])})" for m in methods]
    width = 0.2 if len(methods) > 1 else 0.0

    def draw(ax, i, m, line, seeds):
        off = (i - (len(methods) - 1) / 2) * width / max(len(methods) - 1, 1)
        return _band(ax, [ranks.index(r) + off for r in line["rank"]], line, scale, colour[m], seeds,
                     lambda s: [ranks.index(r) + off for r in s["rank"]], MARKERS[i % len(MARKERS)])

    return _lines(data, points, title, "method", methods, labels, "rank", ticks, xlabel, ylabel, draw, scale)


def reliability_diagrams(data: pd.DataFrame, title: str):
    """One panel per dataset; per variant, accuracy against mean confidence of each non-empty bin (pooled over
    seeds), marker area proportional to the images in the bin; the diagonal is perfect calibration."""
    datasets = list(dict.fromkeys(data["dataset"]))
    variants, colour = _variant_colours(data)
    labels = [f"{v} ({_n_text(data.loc[data['variant'] == v, 'runs'])})" for v in variants]
    fig, axes = _figure(len(datasets), title, "bins pooled over seeds (n = seeds); marker area ∝ images in the bin; "
                        "dashed: perfect calibration", labels, share_y=True)
    handles = {}
    shown = data[data["count"] > 0]
    biggest = max(float(shown["count"].max()), 1.0) if len(shown) else 1.0
    by = {k: g for k, g in shown.groupby(["dataset", "variant"], sort=False)}
    for ax, ds in zip(axes, datasets):
        ax.plot([0, 100], [0, 100], ls="--", color="0.6", lw=1)
        for i, v in enumerate(variants):
            b = by.get((ds, v))
            if b is None:
                continue
            b = b.sort_values("bin")
            x, y = 100 * b["confidence"].to_numpy(), 100 * b["accuracy"].to_numpy()
            (handles[v],) = ax.plot(x, y, color=colour[v], lw=1.2, marker=MARKERS[i % len(MARKERS)], ms=3)
            ax.scatter(x, y, s=4 + 140 * b["count"].to_numpy() / biggest, color=colour[v], alpha=0.3, lw=0)
        ax.set_xlim(-4, 104)  # a margin: points at 0 and 100 are drawn whole
        ax.set_ylim(-4, 104)
        ax.set_title(ds, y=1.0, pad=4)  # a fixed place: matplotlib's automatic one measured every tick label
    _outer(fig, axes, "confidence (mean top probability, %)", "accuracy in bin (%)", share_y=True)
    _legend(fig, [handles[v] for v in variants if v in handles], [lab for v, lab in zip(variants, labels) if v in handles])
    return fig


def _line_pitch(size: float, spacing: float) -> float:
    """Inches between the baselines of two lines of a multi-line text (matplotlib spaces lines by the font's
    height, not by `size`): measured once on a scratch figure."""
    fig = plt.figure(figsize=(2, 2), dpi=72)
    r = fig.canvas.get_renderer()
    one, two = (fig.text(0, 0.5, t, fontsize=size, linespacing=spacing).get_window_extent(r).height for t in ("Xg", "Xg\nXg"))
    plt.close(fig)
    return (two - one) / 72


def label_map_table(cells: pd.DataFrame, title: str, note: str, colour: dict):
    """A table drawn as text, one block per method stacked top to bottom: a row per target class, a column per
    variant; each cell the source class (' k/n' when only k of n seeds chose it; 'a / b' when seeds tie between
    sources). `cells`: target, target_label, method, variant, rank, source_label, agree, runs. Each column is one
    multi-line text (a text per cell cost 10x more). `colour`: method -> colour (the report's)."""
    methods = list(dict.fromkeys(cells["method"]))
    variants = cells.drop_duplicates("rank").sort_values("rank")[["rank", "variant"]]
    n_levels = int(variants["rank"].max())
    targets = cells.drop_duplicates("target").sort_values("target")[["target", "target_label"]]
    size, spacing = 8, 1.3
    row_h = _line_pitch(size, spacing)
    col_w, first_w = 2.3, 1.35
    width = max(first_w + col_w * len(variants) + 0.2, 5.0)
    title_lines = textwrap.wrap(title, int(width * 11))
    head = 0.3 + 0.19 * len(title_lines)
    block = row_h * (len(targets) + 2) + 0.15
    foot = "k/n: the source class chosen by k of n seeds; a / b: seeds split evenly between sources." + \
        (f" {note}" if note else "")
    foot_lines = textwrap.wrap(foot, int(width * 12))
    height = head + block * len(methods) + 0.2 + 0.17 * len(foot_lines)
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.text(0.1, 0.12, "\n".join(title_lines), fontsize=9, va="top", weight="bold")
    kw = dict(fontsize=size, va="top", linespacing=spacing)
    look = {(m, r, t): (s, a, n) for m, r, t, s, a, n in zip(cells["method"], cells["rank"], cells["target"],
                                                           cells["source_label"], cells["agree"], cells["runs"])}
    for k, m in enumerate(methods):
        top = head + k * block
        body = top + 2 * row_h
        for i in range(0, len(targets), 2):
            ax.axhspan(body + i * row_h, body + (i + 1) * row_h, color="0.93", lw=0)
        ax.text(0.1, top, m, weight="bold", color=colour.get(m, "#0072B2"), **kw)
        ax.text(0.1, top + row_h, "target class", weight="bold", **kw)
        ax.text(0.1, body + 0.02, "\n".join(short(t, 18) for t in targets["target_label"]), **kw)
        for j, (r, v) in enumerate(zip(variants["rank"], variants["variant"])):
            x = first_w + j * col_w
            ax.text(x, top + row_h, short(v), weight="bold", color=level_colour(int(r), n_levels), **kw)
            lines = []
            for t in targets["target"]:
                src, a, n = look.get((m, r, t), ("–", 0, 0))
                lines.append(short(src, 29) if a >= n or " / " in src else short(src, 24) + f" {a}/{n}")
            ax.text(x, body + 0.02, "\n".join(lines), **kw)
    ax.text(0.1, height - 0.1, "\n".join(foot_lines), fontsize=8, style="italic", va="bottom", color="0.3")
    return fig


# every figure kind an entry may name (Entry.draw), the paper's remaining ones included
KINDS = {"lines_vs_budget": lines_vs_budget, "lines_vs_level": lines_vs_level,
         "reliability_diagrams": reliability_diagrams, "label_map_table": label_map_table}
KINDS.update(plots_paper.KINDS)
