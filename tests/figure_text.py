"""Test helpers for the report's figures: the texts a render shows, their size at the README's width and their
overlaps (a legibility check of tests/test_report_cost.py and tests/test_report_figures.py)."""
import math

from orchestrator.report.draw import DPI

README_PX = 880  # figures must read at the README's width: text >= 9 px after scaling


def drawn_texts(fig) -> list:
    """The texts a render of `fig` shows: titles, axis labels, legend and figure texts, and the tick labels of
    ticks inside each axis' view (matplotlib keeps a pool of tick objects, some outside the view, not drawn)."""
    out = list(fig.texts) + [t for leg in fig.legends for t in leg.get_texts()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend():
            out += ax.get_legend().get_texts()
        for axis in (ax.xaxis, ax.yaxis):
            locs = axis.get_majorticklocs()
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for loc, tick in zip(locs, axis.get_major_ticks(len(locs))):
                if lo - eps <= loc <= hi + eps:
                    out += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def min_text_px(fig, width_px: int = README_PX) -> tuple[float, str]:
    """(smallest text height in pixels, that text) when the saved PNG (DPI) is shown `width_px` wide (never
    enlarged): font size (pt) x DPI / 72 x scale, over every drawn text of `fig`."""
    fig.canvas.draw()
    scale = min(1.0, width_px / (fig.get_figwidth() * DPI))
    sizes = [(t.get_fontsize() * DPI / 72 * scale, t.get_text()) for t in drawn_texts(fig)]
    return min(sizes) if sizes else (math.inf, "")


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts of `fig` whose boxes overlap, and texts that stick out of the figure (a legibility
    check for tests)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(r).expanded(0.98, 0.9)) for t in drawn_texts(fig)]
    page = fig.bbox
    out = [(text, "<outside the figure>") for text, b in boxes
           if b.x0 < page.x0 - 1 or b.y0 < page.y0 - 1 or b.x1 > page.x1 + 1 or b.y1 > page.y1 + 1]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes[i][1].overlaps(boxes[j][1]):
                out.append((boxes[i][0], boxes[j][0]))
    return out


