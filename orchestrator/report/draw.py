"""What every figure of the report shares: matplotlib (Agg, files only) with the report's fonts, its one colour
vocabulary, figure widths that read at the README's width, and saving to PNG and a vector format."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit import

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colormaps  # noqa: E402

# One colour vocabulary per axis across the whole report: compression levels on a warm ramp (dense black, then
# orange -> dark red as the level compresses more), methods in cool, categorical colours (Okabe & Ito's blue,
# bluish green, reddish purple, sky blue, then Tol's indigo, teal, cyan, green, purple). The two sets share no
# colour, and a method has its colour in every figure (plan passes one method -> colour map for the report).
DENSE = "#000000"
METHOD_COLOURS = ["#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#332288", "#44AA99", "#88CCEE", "#117733", "#AA4499"]
LEVEL_RAMP = ("YlOrRd", 0.45, 0.95)  # the colormap and the part of it the compressed levels use
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
PANEL_W, PANEL_H, MAX_COLS, MIN_W = 3.3, 2.8, 3, 6.4  # 3 panels: 9.9 in, so 8 pt text stays >= 9 px at 880 px
DPI = 100  # figures must read at the README's width (880 px): text >= 9 px after scaling (tests/figure_text.py)

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                     "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10, "svg.fonttype": "none",
                     "axes.spines.top": False, "axes.spines.right": False})


def colours(n: int) -> list[str]:
    """n method colours, in order (a categorical palette; cividis past its end)."""
    if n <= len(METHOD_COLOURS):
        return METHOD_COLOURS[:n]
    cmap = colormaps["cividis"]
    return [matplotlib.colors.to_hex(cmap(0.9 * i / max(n - 1, 1))) for i in range(n)]


def level_colour(rank: int, n_levels: int) -> str:
    """Dense (rank 0) black; compressed level `rank` of `n_levels` on the warm ramp, light to dark."""
    if rank <= 0:
        return DENSE
    name, lo, hi = LEVEL_RAMP
    f = 0.5 if n_levels <= 1 else (rank - 1) / (n_levels - 1)
    return matplotlib.colors.to_hex(colormaps[name](lo + (hi - lo) * f))


def short(text: str, n: int = 22) -> str:
    """`text` cut to n characters, with an ellipsis."""
    return text if len(text) <= n else text[: n - 1] + "…"


def save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write `fig` as stem.<format> for each format (PNG at DPI, SVG without a date: the same figure, the same
    bytes) and close it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.with_suffix("." + fmt)
        kw = {"dpi": DPI, "pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}  # zlib's default level: 3x slower
        fig.savefig(path, metadata={"Date": None} if fmt == "svg" else None, **kw)
        out.append(path)
    plt.close(fig)
    return out

