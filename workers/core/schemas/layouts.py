"""Checking a dataset card's `layout` (what it needs under the data root, torchvision's layout) without torch:
by the loader before torchvision is called, and by a rehearsal on every node (docs/scale.md)."""
from __future__ import annotations

import os
from pathlib import Path

from workers.core.schemas.datasets import DATASETS

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


# The text and DNA tasks' files under the data root (workers/data/text.py reads them; a rehearsal checks them).
ZHANG_COLUMNS = {"yelp_polarity": (["label", "text"], 2), "ag_news": (["class", "title", "description"], 4),
                 "dbpedia14": (["class", "title", "content"], 14)}
IMDB_EXTS = ("csv", "parquet", "jsonl", "json")
TEXT_TASKS = (*ZHANG_COLUMNS, "imdb", "splice")


def _expected(name: str) -> str:
    if name in ZHANG_COLUMNS:
        columns, n = ZHANG_COLUMNS[name]
        return (f"{name}/train.csv and {name}/test.csv, Zhang et al. CSVs without header, "
                f"columns: {', '.join(columns)} (label 1..{n})")
    if name == "imdb":
        return ("imdb/train.<ext> and imdb/test.<ext> (ext: csv, parquet, jsonl or json as JSON lines) with "
                "columns text,label (label 0/neg = negative, 1/pos = positive)")
    return "splice/splice.data (UCI format: `class, id, sequence` per line, class EI, IE or N)"


def text_file(name: str, root: str | None, split: str) -> Path:
    """The file of a text/DNA task's `split` ("train", "test"; splice has one file for both) under `root`;
    FileNotFoundError naming the dataset, the path and what is expected there."""
    expected = _expected(name)
    if root is None:
        raise FileNotFoundError(f"dataset {name!r} reads local files but no data root was given "
                                f"(set the run's data_root); expected {expected} under it")
    folder = Path(root) / name
    if name == "imdb":
        found = [folder / f"{split}.{e}" for e in IMDB_EXTS if (folder / f"{split}.{e}").is_file()]
        if len(found) > 1:
            raise ValueError(f"dataset 'imdb': several {split} files in {folder} "
                             f"({', '.join(p.name for p in found)}); keep one")
        path = found[0] if found else folder / f"{split}.csv"
    else:
        path = folder / ("splice.data" if name == "splice" else f"{split}.csv")
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: {path} not found (root {root!r}); expected {expected}")
    return path
