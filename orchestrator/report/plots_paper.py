"""Drawing the paper's remaining figures (planned by orchestrator.report.paper_figures): class-wise bars, the Δ
heat-map and the learned prompts. Same conventions as orchestrator.report.plots (draw.py: the level colours, text
>= 9 px at 880 px)."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from orchestrator.report.draw import MIN_W, level_colour, plt, short


def _title(fig, title: str, sub: str, width: float) -> float:
    """The title and a subtitle on top; returns their height in inches."""
    lines = textwrap.wrap(title, int(width * 12)) + textwrap.wrap(sub, int(width * 13))
    fig.suptitle("\n".join(lines), y=1 - 0.1 / fig.get_figheight(), va="top", fontsize=9)
    return 0.2 + 0.19 * len(lines)


def class_bars(data: pd.DataFrame, order: list, title: str, n_levels: int):
    """A row per target class (`order`, most loss first), a bar per compressed level (the level colours):
    accuracy minus the dense model's, in points. `data`: target, target_label, rank, variant, delta, n."""
    levels = data.drop_duplicates("rank").sort_values("rank")[["rank", "variant"]]
    width = MIN_W + 0.6
    height = 1.6 + 0.26 * len(order) * max(1, len(levels) / 2)
    fig = plt.figure(figsize=(width, height))
    top = _title(fig, title, "bars: compressed − dense accuracy per class (points, means over seeds)", width)
    fig.subplots_adjust(left=1.5 / width, right=1 - 0.3 / width, top=1 - top / height, bottom=0.95 / height)
    ax = fig.add_subplot(1, 1, 1)
    pos = {t: i for i, t in enumerate(order)}
    h = 0.8 / max(len(levels), 1)
    for j, (rk, v) in enumerate(zip(levels["rank"], levels["variant"])):
        d = data[data["rank"] == rk]
        y = np.array([pos[t] for t in d["target"]]) - 0.4 + h * (j + 0.5)
        ax.barh(y, 100 * d["delta"].to_numpy(), height=h, color=level_colour(int(rk), n_levels), label=v)
    labels = data.drop_duplicates("target").set_index("target")["target_label"]
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([short(str(labels[t]), 20) for t in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("accuracy change vs dense (points)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="lower center", ncol=max(1, len(levels)), frameon=False, bbox_to_anchor=(0.5, 0.02))
    return fig


def delta_heatmap(data: pd.DataFrame, title: str, ylabel: str):
    """Rows: levels (least -> most compressed), columns: datasets; each cell the paired accuracy cost in points,
    bold where its interval excludes 0. Brown: loss, teal: gain (BrBG, centred on 0)."""
    datasets = list(dict.fromkeys(data["dataset"]))
    levels = data.drop_duplicates("rank").sort_values("rank")[["rank", "variant"]]
    m = np.full((len(levels), len(datasets)), np.nan)
    bold = np.zeros_like(m, dtype=bool)
    ri = {r: i for i, r in enumerate(levels["rank"])}
    for ds, r, v, x in zip(data["dataset"], data["rank"], data["mean"], data["excludes_zero"]):
        m[ri[r], datasets.index(ds)], bold[ri[r], datasets.index(ds)] = 100 * v, bool(x)
    width = min(9.8, max(MIN_W, 2.0 + 0.9 * len(datasets)))
    height = 1.9 + 0.32 * len(levels)
    fig = plt.figure(figsize=(width, height))
    top = _title(fig, title, "points, compressed − dense paired by seed; bold: 95% interval excludes 0", width)
    fig.subplots_adjust(left=1.3 / width, right=1 - 1.2 / width, top=1 - top / height, bottom=0.9 / height)
    ax = fig.add_subplot(1, 1, 1)
    lim = max(1.0, float(np.nanmax(np.abs(m)))) if np.isfinite(m).any() else 1.0
    im = ax.imshow(m, cmap="BrBG", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                        weight="bold" if bold[i, j] else "normal", color="white" if abs(m[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels([short(d, 12) for d in datasets], rotation=30 if len(datasets) > 4 else 0, ha="right"
                       if len(datasets) > 4 else "center")
    ax.set_yticks(range(len(levels)))
    ax.set_yticklabels([v.split(" ")[-1] for v in levels["variant"]])
    ax.set_ylabel(ylabel.split(" (")[0])
    bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label("Δ accuracy (points)")
    return fig


def prompt_grid(images: dict, cells: pd.DataFrame, title: str):
    """A row per method, a column per variant: each run's learned prompt as an RGB image."""
    methods = list(dict.fromkeys(cells["method"]))
    variants = cells.drop_duplicates("rank").sort_values("rank")["variant"].tolist()
    side = 1.6
    width = max(MIN_W, 1.2 + side * len(variants))
    height = 1.2 + side * len(methods) + 0.3
    fig = plt.figure(figsize=(width, height))
    # small prompts sit near 0.5 (grey): their deviation is stretched by one factor for every image, so the images
    # stay comparable with each other
    dev = max(float(np.abs(np.asarray(im) - 0.5).max()) for im in images.values()) if images else 0.0
    k = 0.5 / dev if dev > 0 else 1.0
    how = f"0.5 + {k:.3g} × (sigmoid(prompt) − 0.5), one stretch for every image" if k > 1.01 else \
        "sigmoid(prompt) as added to the canvas"
    top = _title(fig, title, f"{how}; seed shown per image", width) + 0.3
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.2 / width, top=1 - top / height, bottom=0.1 / height,
                        wspace=0.15, hspace=0.35)
    seeds = {(m, v): s for m, v, s in zip(cells["method"], cells["variant"], cells["seed"])}
    for i, m in enumerate(methods):
        for j, v in enumerate(variants):
            ax = fig.add_subplot(len(methods), len(variants), i * len(variants) + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if (m, v) in images:
                ax.imshow(np.clip(0.5 + k * (images[(m, v)] - 0.5), 0, 1), interpolation="nearest")
                ax.set_title(f"{short(v, 16)}, seed {seeds[(m, v)]}", fontsize=8, pad=3)
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(m, fontsize=9)
    return fig


KINDS = {"class_bars": class_bars, "delta_heatmap": delta_heatmap, "prompt_grid": prompt_grid}
