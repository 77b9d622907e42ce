"""A store's rows: their Arrow schema (from `RunResult`), the one-row file names, and which row of a run wins.

Apart from the store so compaction (workers/core/compaction.py) and the store read them without importing each other.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Union

import pyarrow as pa

from workers.core.spec import RunResult


def _arrow_type(tp) -> pa.DataType:
    if typing.get_origin(tp) is Union:  # Optional[X]
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[tp]


def _schema() -> pa.Schema:
    hints = typing.get_type_hints(RunResult)
    return pa.schema([pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(RunResult)])


SCHEMA = _schema()
ROW_GROUP = 1024  # rows a merged file's row group holds (about); compaction buffers one group
ONE_ROW = re.compile(r"^([0-9a-f]{16})\.(ok|failed|rehearsed)\.parquet$")
# A run is done when its row says ok, or rehearsed in a rehearsal store (docs/scale.md); the two never mix.
DONE = ("ok", "rehearsed")


def winners(keys: list, statuses: list, finished: list) -> list[int]:
    """Indices of the rows `dedup` keeps: per run_key, a done row beats a failed one, then the latest
    finished_at wins (a row without one loses)."""
    best: dict = {}
    for i, (k, st, at) in enumerate(zip(keys, statuses, finished)):
        rank = (st in DONE, -1e300 if at is None else at)
        if k not in best or rank >= best[k][0]:
            best[k] = (rank, i)
    return [i for _, (_, i) in sorted(best.items())]  # by run_key, as readers have always seen them


def dedup(table: pa.Table) -> pa.Table:
    """One row per run_key (see `winners`), in Arrow: no pandas copy of the list columns."""
    if table.num_rows == 0:
        return table
    cols = [table.column(c).to_pylist() for c in ("run_key", "status", "finished_at")]
    return table.take(pa.array(winners(*cols), pa.int64()))
