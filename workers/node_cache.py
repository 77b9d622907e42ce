"""This node's cache: weights, decoded datasets and other things computed once per node. Torch-free, so the
rehearsal's worker and the control plane can name it without loading the data plane."""
from __future__ import annotations

import os
from pathlib import Path


def node_cache_dir() -> Path:
    """$VPGRID_CACHE, else ~/.cache/vpgrid; never the shared store."""
    return Path(os.environ.get("VPGRID_CACHE") or Path.home() / ".cache" / "vpgrid").expanduser()
