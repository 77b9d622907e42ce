"""Drawing the report's figures: thin functions that draw exactly the frame they are given (made by
orchestrator.figures) and save it. matplotlib (Agg) only; no aggregation happens here."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit import

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402

# Okabe & Ito's colour-blind-safe palette; black is kept for the dense model.
DENSE = "#000000"
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
PANEL_W, PANEL_H, MAX_COLS, MIN_W = 3.4, 2.8, 4, 6.4

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                     "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10, "svg.fonttype": "none",
                     "axes.spines.top": False, "axes.spines.right": False})


def colours(n: int) -> list[str]:
    """n categorical colours, in order: Okabe-Ito while it lasts, else cividis (ordered, colour-blind safe)."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    cmap = colormaps["cividis"]
    return [matplotlib.colors.to_hex(cmap(0.9 * i / max(n - 1, 1))) for i in range(n)]


def _legend_cols(width: float, labels: list[str]) -> int:
    per = max((len(x) for x in labels), default=1) * 0.075 + 0.6  # inches per entry at the legend's font size
    return max(1, min(len(labels), int(width // per)))


def _figure(n: int, title: str, sub: str, labels: list[str], rotated: bool = False):
    """A figure of n panels (at most MAX_COLS a row) with fixed margins: the title on top, the legend (`labels`)
    at the bottom. Margins are computed, not solved: constrained layout cost a third of the drawing time."""
    cols = min(MAX_COLS, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    width = max(PANEL_W * cols, MIN_W)
    lines = textwrap.wrap(title, int(width * 12)) + [sub]  # ~12 title characters per inch
    leg_rows = math.ceil(len(labels) / _legend_cols(width, labels)) if labels else 0
    top, bottom = 0.25 + 0.19 * len(lines) + 0.25, 0.15 + 0.2 * leg_rows + (0.95 if rotated else 0.6)
    gap_w, gap_h = 0.8, (1.25 if rotated else 0.95)
    height = (PANEL_H - 0.6) * rows + gap_h * (rows - 1) + top + bottom
    fig = plt.figure(figsize=(width, height))
    left, right = 0.75, 0.2
    ax_w = (width - left - right - gap_w * (cols - 1)) / cols
    ax_h = (height - top - bottom - gap_h * (rows - 1)) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / ax_w, hspace=gap_h / ax_h)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    fig.suptitle("\n".join(lines), y=1 - 0.12 / height, va="top")
    return fig, axes


def _n_text(ns) -> str:
    ns = sorted({int(x) for x in ns})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def _legend(fig, handles, labels) -> None:
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.08 / fig.get_figheight()),
                   ncol=_legend_cols(fig.get_figwidth(), labels), frameon=False)


def _rotated(labels: list[str]) -> bool:
    return sum(len(x) for x in labels) > 28


def _ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)))
    long = _rotated(labels)
    ax.set_xticklabels(labels, rotation=35 if long else 0, ha="right" if long else "center")


def render(kind: str, kwargs: dict, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Draw `KINDS[kind](**kwargs)` and save it as stem.<format> for each format: a plain function of picklable
    arguments, so a process pool can run it."""
    return save(KINDS[kind](**kwargs), Path(stem), tuple(formats))


def save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.with_suffix("." + fmt)
        fig.savefig(path, dpi=110 if fmt == "png" else None, metadata={"Date": None} if fmt == "svg" else None)
        out.append(path)
    plt.close(fig)
    return out


SEEDS_SUB = "mean ± std over seeds (n = seeds per point)"


def _variant_colours(data: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Variants dense first, then least -> most compressed; dense black, the rest in order."""
    variants = data.drop_duplicates("variant").sort_values("rank", kind="stable")
    names = variants["variant"].tolist()
    comp = [v for v, r in zip(names, variants["rank"]) if r > 0]
    return names, {**dict(zip(comp, colours(len(comp)))), "dense": DENSE}


def lines_vs_budget(data: pd.DataFrame, title: str, ylabel: str, scale: float):
    """One panel per dataset; x: data budget (categorical, ascending, 'full' last); one line per variant
    (dense black, then least -> most compressed); band: ± one std over seeds. `data`: summarize() rows."""
    datasets = list(dict.fromkeys(data["dataset"]))
    budgets = data.drop_duplicates("budget").sort_values("budget_rank")["budget"].tolist()
    ticks = [b.replace("-shot", "") for b in budgets]
    xpos = {b: i for i, b in enumerate(budgets)}
    variants, colour = _variant_colours(data)
    labels = [f"{v} ({_n_text(data.loc[data['variant'] == v, 'n'])})" for v in variants]
    fig, axes = _figure(len(datasets), title, SEEDS_SUB, labels, _rotated(ticks))
    handles = {}
    by = {k: g for k, g in data.groupby(["dataset", "variant"], sort=False)}
    for ax, ds in zip(axes, datasets):
        for i, v in enumerate(variants):
            line = by.get((ds, v))
            if line is None:
                continue
            line = line.sort_values("budget_rank")
            x = [xpos[b] for b in line["budget"]]
            y, s = scale * line["mean"].to_numpy(), scale * line["std"].fillna(0).to_numpy()
            (handles[v],) = ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colour[v], lw=1.5, ms=4)
            ax.fill_between(x, y - s, y + s, color=colour[v], alpha=0.15, lw=0)
        ax.set_title(ds)
        _ticks(ax, ticks)
        ax.set_xlabel("training images per class")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, [handles[v] for v in variants if v in handles], [lab for v, lab in zip(variants, labels) if v in handles])
    return fig


def lines_vs_level(data: pd.DataFrame, title: str, ylabel: str, scale: float, xlabel: str):
    """One panel per dataset; x: dense then each level, least -> most compressed (categorical); one line per
    method, dodged sideways so error bars (± one std over seeds) do not hide each other."""
    datasets = list(dict.fromkeys(data["dataset"]))
    levels = data.drop_duplicates("rank").sort_values("rank")["variant"].tolist()
    ticks = [v.split(" ")[-1] if i else v for i, v in enumerate(levels)]
    ranks = sorted(data["rank"].unique())
    methods = list(dict.fromkeys(data["method"]))
    colour = dict(zip(methods, colours(len(methods))))
    labels = [f"{m} ({_n_text(data.loc[data['method'] == m, 'n'])})" for m in methods]
    width = 0.25 if len(methods) > 1 else 0.0
    fig, axes = _figure(len(datasets), title, SEEDS_SUB, labels, _rotated(ticks))
    handles = {}
    by = {k: g for k, g in data.groupby(["dataset", "method"], sort=False)}
    for ax, ds in zip(axes, datasets):
        for i, m in enumerate(methods):
            line = by.get((ds, m))
            if line is None:
                continue
            line = line.sort_values("rank")
            off = (i - (len(methods) - 1) / 2) * width / max(len(methods) - 1, 1)
            x = [ranks.index(r) + off for r in line["rank"]]
            handles[m] = ax.errorbar(x, scale * line["mean"].to_numpy(), yerr=scale * line["std"].fillna(0).to_numpy(),
                                     marker=MARKERS[i % len(MARKERS)], color=colour[m], lw=1.5, ms=4, capsize=2)
        ax.set_title(ds)
        _ticks(ax, ticks)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, [handles[m] for m in methods if m in handles], [lab for m, lab in zip(methods, labels) if m in handles])
    return fig


def reliability_diagrams(data: pd.DataFrame, title: str):
    """One panel per dataset; per variant, accuracy against mean confidence of each non-empty bin (pooled over
    seeds); the diagonal is perfect calibration."""
    datasets = list(dict.fromkeys(data["dataset"]))
    variants, colour = _variant_colours(data)
    labels = [f"{v} ({_n_text(data.loc[data['variant'] == v, 'runs'])[2:]} run{'s' * int(data.loc[data['variant'] == v, 'runs'].max() > 1)})"
              for v in variants]
    fig, axes = _figure(len(datasets), title, "bins pooled over seeds; dashed: perfect calibration", labels)
    handles = {}
    by = {k: g for k, g in data[data["count"] > 0].groupby(["dataset", "variant"], sort=False)}
    for ax, ds in zip(axes, datasets):
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
        for i, v in enumerate(variants):
            b = by.get((ds, v))
            if b is None:
                continue
            b = b.sort_values("bin")
            (handles[v],) = ax.plot(b["confidence"].to_numpy(), b["accuracy"].to_numpy(), marker=MARKERS[i % len(MARKERS)],
                                    color=colour[v], lw=1.3, ms=3.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(ds)
        ax.set_xlabel("confidence (mean top probability)")
        ax.set_ylabel("accuracy in bin")
        ax.grid(alpha=0.3)
    _legend(fig, [handles[v] for v in variants if v in handles], [lab for v, lab in zip(variants, labels) if v in handles])
    return fig


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def label_map_table(cells: pd.DataFrame, title: str, note: str):
    """A table drawn as text: one row per target class, one column per (method, variant); each cell the
    source class name, with 'k/n' when only k of n seeds chose it. `cells`: target_label, method, variant,
    rank, source_label, agree, runs."""
    cols = cells.drop_duplicates(["method", "rank"]).sort_values(["method", "rank"])[["method", "variant", "rank"]]
    targets = cells.drop_duplicates("target").sort_values("target")[["target", "target_label"]]
    col_w, first_w, row_h = 1.75, 1.3, 0.24
    width = first_w + col_w * len(cols)
    height = row_h * (len(targets) + 2) + 1.0 + (0.3 if note else 0)
    fig = plt.figure(figsize=(max(width, 4.5), height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, max(width, 4.5))
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.text(0.1, 0.3, "\n".join(textwrap.wrap(title, 95)), fontsize=9, va="top", weight="bold")
    top = 0.85
    look = {(m, r, t): (s, a, n) for m, r, t, s, a, n in zip(cells["method"], cells["rank"], cells["target"],
                                                           cells["source_label"], cells["agree"], cells["runs"])}
    ax.text(0.1, top + row_h, "target class", fontsize=8, weight="bold", va="center")
    prev = None
    for j, (m, v, r) in enumerate(zip(cols["method"], cols["variant"], cols["rank"])):
        x = first_w + j * col_w
        if m != prev:
            ax.text(x, top, m, fontsize=8, weight="bold", va="center", color="#0072B2")
            prev = m
        ax.text(x, top + row_h, _short(v), fontsize=8, weight="bold", va="center", color=DENSE if r == 0 else "#D55E00")
    for i, (t, tl) in enumerate(zip(targets["target"], targets["target_label"])):
        y = top + row_h * (i + 2)
        if i % 2 == 0:
            ax.axhspan(y - row_h / 2, y + row_h / 2, color="0.94", lw=0)
        ax.text(0.1, y, _short(tl, 18), fontsize=8, va="center")
        for j, (m, r) in enumerate(zip(cols["method"], cols["rank"])):
            s, a, n = look.get((m, r, t), ("", 0, 0))
            label = _short(s, 19 if a < n else 22) + (f" {a}/{n}" if a < n else "")
            ax.text(first_w + j * col_w, y, label, fontsize=7.5, va="center", color="0.35" if a < n else "black")
    if note:
        ax.text(0.1, height - 0.25, note, fontsize=7.5, style="italic", va="center", color="0.3")
    return fig


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of `fig` whose boxes overlap, and texts that stick out of the figure (a
    legibility check for tests)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()
             and t.get_figure() is not None]
    boxes = [(t.get_text(), t.get_window_extent(r).expanded(0.98, 0.9)) for t in texts]
    page = fig.bbox
    out = [(text, "<outside the figure>") for text, b in boxes
           if b.x0 < page.x0 - 1 or b.y0 < page.y0 - 1 or b.x1 > page.x1 + 1 or b.y1 > page.y1 + 1]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes[i][1].overlaps(boxes[j][1]):
                out.append((boxes[i][0], boxes[j][0]))
    return out


KINDS = {"lines_vs_budget": lines_vs_budget, "lines_vs_level": lines_vs_level,
         "reliability_diagrams": reliability_diagrams, "label_map_table": label_map_table}
