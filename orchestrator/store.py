"""The Parquet store: one file per finished run, published atomically; the only record of what is done.

Layout of a store DIR:
    DIR/runs/<run_key>.parquet    one row, written to a hidden temporary then renamed
    DIR/runs/part-<id>.parquet    many rows, written by `compact`
    DIR/_vpgrid/                  grid.yaml, launch.json, running/ heartbeats, Ray Tune's files
pyarrow (and so pandas and DuckDB) skip names starting with '.' or '_', so `pandas.read_parquet(DIR)`
reads exactly the rows. Readers deduplicate by run_key (see `dedup`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
import uuid
from pathlib import Path
from typing import Optional, Union

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from workers.spec import RunResult


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


class StoreError(RuntimeError):
    pass


def dedup(table: pa.Table) -> pa.Table:
    """One row per run_key: an ok row beats a failed one, then the latest finished_at wins."""
    if table.num_rows == 0:
        return table
    df = table.to_pandas()
    df["_ok"] = df["status"] == "ok"
    df = df.sort_values(["run_key", "_ok", "finished_at"], na_position="first", kind="stable")
    df = df.drop_duplicates("run_key", keep="last").drop(columns="_ok")
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=SCHEMA, preserve_index=False)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.stem}-{uuid.uuid4().hex[:8]}.parquet")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename must not publish a file whose bytes are not on disk
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Store:
    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).resolve()
        self.runs_dir = self.root / "runs"
        self.meta_dir = self.root / "_vpgrid"

    # -- writing ---------------------------------------------------------------------------------
    def create(self, grid_text: str) -> None:
        for d in (self.runs_dir, self.meta_dir / "running"):
            d.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_dir / f".tmp-grid-{uuid.uuid4().hex[:8]}.yaml"
        tmp.write_text(grid_text)
        os.replace(tmp, self.meta_dir / "grid.yaml")

    def publish(self, result: Union[RunResult, dict]) -> Path:
        row = result.to_row() if isinstance(result, RunResult) else dict(result)
        if set(row) != set(SCHEMA.names):
            raise StoreError(f"row columns differ from the schema: {sorted(set(row) ^ set(SCHEMA.names))}")
        path = self.runs_dir / f"{row['run_key']}.parquet"
        _write_atomic(pa.Table.from_pylist([row], schema=SCHEMA), path)
        return path

    def compact(self) -> tuple[int, int]:
        """Merge all run files into one deduplicated file with large row groups. Returns (before, after)."""
        files = self._files()
        if len(files) <= 1:
            return len(files), len(files)
        table = dedup(self._read(files).combine_chunks())
        _write_atomic(table, self.runs_dir / f"part-{uuid.uuid4().hex[:12]}.parquet")
        for f in files:  # only what was read: runs published meanwhile stay
            f.unlink(missing_ok=True)
        return len(files), len(self._files())

    # -- reading ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.meta_dir / "grid.yaml").is_file()

    def grid_text(self) -> str:
        if not self.exists():
            raise StoreError(f"{self.root} is not a vpgrid store (no _vpgrid/grid.yaml); "
                             "create one with `vpgrid launch GRID --store DIR`")
        return (self.meta_dir / "grid.yaml").read_text()

    def _files(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.glob("*.parquet") if not p.name.startswith((".", "_")))

    def _read(self, files: list[Path], columns: Optional[list[str]] = None) -> pa.Table:
        if not files:
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        return ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table(columns=columns)

    def table(self) -> pa.Table:
        """All runs, one row per run_key."""
        return dedup(self._read(self._files()))

    def frame(self):
        return self.table().to_pandas()

    def statuses(self) -> dict[str, str]:
        """run_key -> 'ok' | 'failed' (ok wins when both exist), reading three columns only."""
        t = self._read(self._files(), ["run_key", "status", "finished_at"])
        out: dict[str, str] = {}
        for key, status in zip(t.column("run_key").to_pylist(), t.column("status").to_pylist()):
            if out.get(key) != "ok":
                out[key] = status
        return out

    def status_of(self, run_key: str) -> Optional[str]:
        """The status in the run's own one-row file, if it has one (compacted rows are not looked at): O(1)."""
        path = self.runs_dir / f"{run_key}.parquet"
        if not path.exists():
            return None
        return pq.read_table(path, columns=["status"]).column("status")[0].as_py()

    def finished_times(self) -> list[float]:
        t = self._read(self._files(), ["finished_at"])
        return [x for x in t.column("finished_at").to_pylist() if x is not None]

    # -- launch bookkeeping ----------------------------------------------------------------------
    def write_launch(self, info: dict) -> None:
        _write_json_atomic(info, self.meta_dir / "launch.json")

    def launch_info(self) -> dict:
        p = self.meta_dir / "launch.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def heartbeat(self, trial: str, info: dict) -> None:
        _write_json_atomic({**info, "trial": trial, "updated": time.time()}, self.meta_dir / "running" / f"{trial}.json")

    def end_heartbeat(self, trial: str) -> None:
        (self.meta_dir / "running" / f"{trial}.json").unlink(missing_ok=True)

    def heartbeats(self) -> list[dict]:
        out = []
        for p in sorted((self.meta_dir / "running").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                pass  # removed between listing and reading
        return out

    def clear_heartbeats(self) -> None:
        for p in (self.meta_dir / "running").glob("*.json"):
            p.unlink(missing_ok=True)

