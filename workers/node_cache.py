"""This node's cache: weights, decoded datasets and whatever else is computed once per node. Torch-free, so the
rehearsal's worker and the control plane can name it without loading the data plane."""
from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path
from typing import Callable, Optional


def node_cache_dir() -> Path:
    """$VPGRID_CACHE, else ~/.cache/vpgrid; never the shared store."""
    return Path(os.environ.get("VPGRID_CACHE") or Path.home() / ".cache" / "vpgrid").expanduser()


def once(path: Path, write: Callable[[Path], None], valid: Optional[Callable[[Path], bool]] = None) -> Path:
    """Make `path` once on this node and return it. The first process to take the file lock calls write(tmp) on a
    hidden temporary beside it, which is fsynced and renamed onto `path` (a reader sees the whole file or none) and
    removed if write fails; processes arriving meanwhile (trials starting together) wait on the lock, then find
    the file. An existing file that `valid` rejects is made again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists() or (valid is not None and not valid(path)):
            tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                write(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    return path
