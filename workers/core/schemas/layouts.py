"""Checking a dataset card's `layout` (what it needs under the data root, torchvision's layout) without torch:
by the loader before torchvision is called, and by a rehearsal on every node (docs/scale.md)."""
from __future__ import annotations

import os
from pathlib import Path

from workers.core.schemas.datasets import DATASETS

# Each image dataset's layout as {name: [path, ...]}, read from the cards at import (for orchestrator.bench_scale;
# everything else reads the card).
NEEDS = {name: list(card.layout) for name, card in DATASETS.items() if card.layout}

HOW = ("Set the data root with --data-root, $VPGRID_DATA or the grid's data_root; "
       "`download: true` in the dataset's args fetches it there where network is available.")


def check_layout(name: str, root: str | None, download: bool = False, fmt: dict | None = None) -> list[str]:
    """The paths `name` needs under `root` (its card's layout; torchvision checks for them too, but its own message
    does not say where it looked, and Caltech101 would create folders under a wrong root); FileNotFoundError
    naming the dataset, the root and what is missing when there is no root or (unless it is to be downloaded) a
    path is absent."""
    needs = [p.format(**(fmt or {})) for p in DATASETS[name].layout]
    if root is None:
        raise FileNotFoundError(f"dataset {name!r}: no data root is set; it expects torchvision's layout "
                                f"<root>/{', <root>/'.join(needs)}. {HOW}")
    root = os.path.expanduser(str(root))
    missing = [str(Path(root) / p) for p in needs if not (Path(root) / p).exists()]
    if missing and not download:
        raise FileNotFoundError(f"dataset {name!r} not found under data root {root!r}: missing "
                                f"{', '.join(missing)} (torchvision's layout). {HOW}")
    return needs
