"""Compaction: a store's run files merged into one deduplicated file with large row groups, safely while trials
publish (see `compact`). `Store.compact` is the way in; this works on a store's own listing, reading and writing.
"""
from __future__ import annotations

import uuid
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.core.errors import StoreError
from workers.core.rows import ONE_ROW, ROW_GROUP, SCHEMA, winners


def compact(store) -> tuple[int, int]:
    """Merge all run files into one deduplicated file with large row groups. Returns (before, after).

    Safe while trials publish: only the files read are deleted, after the merged file is in place.
    Streamed: the rows to keep are picked from the one-row files' names and three columns of the merged
    files; then files are read a batch at a time into row groups, so memory holds the merged output and one
    batch, never a pandas copy of every row (12k rows took a driver to 2.8 GB that way). Another compaction
    deleting a picked file meanwhile (a driver's housekeeper still finishing one) has merged it: list again."""
    for _ in range(5):
        try:
            return _compact_once(store)
        except FileNotFoundError:
            continue
    raise StoreError(f"store {store.root}: other compactions kept removing its files; try again")


def _compact_once(store) -> tuple[int, int]:
    picked = store._consistent(lambda infos: _winners(store, infos))
    if len(picked) <= 1:
        return len(picked), len(picked)
    buf = pa.BufferOutputStream()
    with pq.ParquetWriter(buf, SCHEMA) as out:
        group: list[pa.Table] = []
        one_row: list[str] = []

        def flush(force: bool) -> None:
            if one_row and (force or len(one_row) >= ROW_GROUP // 4):
                group.append(store._read(one_row))  # one pyarrow.dataset read of many small files
                one_row.clear()
            n = sum(t.num_rows for t in group)
            if n and (force or n >= ROW_GROUP):
                out.write_table(pa.concat_tables(group).combine_chunks(), row_group_size=n)
                group.clear()

        for path, keep in picked.items():
            if keep is None:
                one_row.append(path)
            elif keep:
                group.append(store._read([path]).take(pa.array(keep, pa.int64())))
            flush(False)
        flush(True)
    store._put(f"{store.runs_dir}/part-{uuid.uuid4().hex[:12]}.parquet", buf.getvalue().to_pybytes())
    store._delete(list(picked))
    return len(picked), len(store._files())


def _winners(store, infos: list[pafs.FileInfo]) -> dict[str, Optional[list[int]]]:
    """path -> the row numbers of a merged file that `dedup` keeps; for a one-row file None when its row is kept,
    [] when not. A one-row file is known by its name (its time: the file's modification time, as `scan`)."""
    cols = ["run_key", "status", "finished_at"]
    keys, statuses, times, owner = [], [], [], []
    for info in infos:
        m = ONE_ROW.match(info.base_name)
        if m:
            keys.append(m.group(1)), statuses.append(m.group(2))
            times.append(info.mtime.timestamp() if info.mtime else None)
            owner.append((info.path, None))
            continue
        t = store._columns([info.path], cols)
        for c, acc in zip(cols, (keys, statuses, times)):
            acc.extend(t.column(c).to_pylist())
        owner.extend((info.path, j) for j in range(t.num_rows))
    out: dict[str, Optional[list[int]]] = {i.path: [] for i in infos}
    for i in winners(keys, statuses, times):
        path, j = owner[i]
        if j is None:
            out[path] = None
        else:
            out[path].append(j)
    return out
