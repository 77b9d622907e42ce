"""The Parquet store: one file per finished run, published whole; the only record of what is done.

A store is a local path or a URI (file://, s3://, gs://), all through one pyarrow filesystem code path.
Layout of a store ROOT:
    ROOT/runs/<run_key>.<ok|failed|rehearsed>.parquet   one row, published whole (see `_put`)
    ROOT/runs/part-<id>.parquet               many rows, written by `compact`
    ROOT/_vpgrid/                             grid.yaml, launch.json, submitted.json, running/ heartbeats, rehearsal.json
A one-row file's name carries its run's status, so `statuses` lists the folder instead of opening every
file. pyarrow (and so pandas and DuckDB) skip names starting with '.' or '_', so `pandas.read_parquet(ROOT)`
reads exactly the rows. Readers deduplicate by run_key (see `dedup`).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, TypeVar, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.core.errors import StoreError
from workers.core.rows import DONE, ONE_ROW, SCHEMA, dedup
from workers.core.spec import RunResult
from workers.core.uri import URIError, bucket_missing, open_uri

T = TypeVar("T")


def _is_part(info: pafs.FileInfo) -> bool:
    return info.base_name.startswith("part-")


HEARTBEAT_S = 10.0  # seconds between a driver's or a trial's heartbeats in the store

class Store:
    def __init__(self, location: Union[str, Path]) -> None:
        try:
            self.fs, self._base, self.root = open_uri(location)
        except (URIError, OSError) as e:
            raise StoreError(f"store {location}: {e}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.runs_dir = f"{self._base}/runs"
        self.meta_dir = f"{self._base}/_vpgrid"

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # -- low-level I/O -----------------------------------------------------------------------------
    def _put(self, path: str, data: bytes) -> None:
        """Publish `data` at `path` whole or not at all: an object PUT is atomic; on POSIX write a hidden
        temporary, fsync it, then rename."""
        if not self.local:
            with self.fs.open_output_stream(path) as f:  # an aborted upload leaves no object
                f.write(data)
            return
        tmp = f"{os.path.dirname(path)}/.tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not publish a file whose bytes are not on disk
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get(self, path: str) -> Optional[bytes]:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _list(self, folder: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(folder, allow_not_found=True)
        try:
            return [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        except FileNotFoundError:
            raise
        except OSError as e:  # unreachable endpoint, refused credentials: one line that names the store
            raise StoreError(f"store {self.root}: cannot list {folder}: {str(e).splitlines()[0]}") from None

    def _delete(self, paths: list[str]) -> None:
        def rm(p: str) -> None:
            try:
                self.fs.delete_file(p)
            except FileNotFoundError:
                pass  # a concurrent compaction took it

        with ThreadPoolExecutor(1 if self.local else 16) as pool:  # object stores delete one key per request
            list(pool.map(rm, paths))

    def _check_bucket(self) -> None:
        if bucket_missing(self.fs, self._base):
            raise StoreError(f"store {self.root}: bucket {self._base.split('/', 1)[0]!r} does not exist "
                             "(or these credentials cannot see it); create it first or fix the URI")

    def _check_writable(self, what: str, fn: Callable[[], T]) -> T:
        try:
            self._check_bucket()
            return fn()
        except OSError as e:
            raise StoreError(f"store {self.root}: cannot {what}: {str(e).splitlines()[0]}") from None

    # -- writing ---------------------------------------------------------------------------------
    def create(self, grid_text: str, rehearsal: Optional[dict] = None) -> None:
        """Write the grid; with `rehearsal` ({speedup, throughput}) mark the store as a rehearsal's. A store is
        one kind for life: rehearsed rows are never mixed with results."""
        def make() -> None:
            was = self.rehearsal() if self.exists() else None
            if was is not None and rehearsal is None:
                raise StoreError(f"store {self.root} holds a rehearsal (rehearsed rows, no results); launch the "
                                 "real grid into another store, or continue the rehearsal with --rehearse")
            if was is None and rehearsal is not None and self.exists():
                raise StoreError(f"store {self.root} holds real results; rehearse into another store "
                                 "(--store URI): rehearsed rows are never mixed with results")
            if self.local:
                for d in (self.runs_dir, f"{self.meta_dir}/running"):
                    self.fs.create_dir(d, recursive=True)
            if rehearsal is not None and was is None:
                self._put_json(rehearsal, f"{self.meta_dir}/rehearsal.json")  # before the grid: never a bare grid
            self._put(f"{self.meta_dir}/grid.yaml", grid_text.encode())

        self._check_writable("write grid.yaml", make)

    def publish(self, result: Union[RunResult, dict]) -> str:
        row = result.to_row() if isinstance(result, RunResult) else dict(result)
        if set(row) != set(SCHEMA.names):
            raise StoreError(f"row columns differ from the schema: {sorted(set(row) ^ set(SCHEMA.names))}")
        if row["status"] not in ("ok", "failed", "rehearsed"):
            raise StoreError(f"row status must be 'ok', 'failed' or 'rehearsed', got {row['status']!r}")
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), buf)
        path = f"{self.runs_dir}/{row['run_key']}.{row['status']}.parquet"
        self._put(path, buf.getvalue().to_pybytes())
        return path

    def put_prompt(self, run_key: str, data: bytes) -> str:
        """Publish a run's learned prompt (safetensors bytes) whole, as ROOT/_prompts/<run_key>.safetensors; returns
        its location. A '_' folder, so readers of the store's Parquet skip it."""
        folder = f"{self._base}/_prompts"
        if self.local:
            self.fs.create_dir(folder, recursive=True)
        path = f"{folder}/{run_key}.safetensors"
        self._put(path, data)
        return self._uri_of(path)

    def read_prompt(self, run_key: str) -> Optional[bytes]:
        """A run's learned prompt as put_prompt stored it (safetensors bytes); None when the store has none."""
        return self._get(f"{self._base}/_prompts/{run_key}.safetensors")

    def compact(self) -> tuple[int, int]:
        """Merge all run files into one deduplicated file with large row groups (workers/core/compaction.py).
        Returns (files before, files after)."""
        from workers.core.compaction import compact

        return compact(self)

    # -- reading ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.get_file_info(f"{self.meta_dir}/grid.yaml").type == pafs.FileType.File

    def rehearsal(self) -> Optional[dict]:
        """{speedup, throughput} when this store holds a rehearsal (docs/scale.md), else None."""
        return self._get_json(f"{self.meta_dir}/rehearsal.json")

    def grid_text(self) -> str:
        try:
            data = self._get(f"{self.meta_dir}/grid.yaml")
            if data is None:
                self._check_bucket()  # no bucket: say that, not "not a vpgrid store"
        except OSError as e:
            raise StoreError(f"store {self.root}: cannot read it: {str(e).splitlines()[0]}") from None
        if data is None:
            raise StoreError(f"{self.root} is not a vpgrid store (no _vpgrid/grid.yaml); "
                             "create one with `vpgrid launch GRID --store URI`")
        return data.decode()

    def _files(self) -> list[pafs.FileInfo]:
        return sorted((i for i in self._list(self.runs_dir)
                       if i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))),
                      key=lambda i: i.path)

    def _read(self, files: list[str], columns: Optional[list[str]] = None) -> pa.Table:
        if not files:
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        import pyarrow.dataset as ds  # imports pandas (~0.5 s): only when rows are read, not for a listing

        try:
            return ds.dataset(files, schema=SCHEMA, format="parquet", filesystem=self.fs).to_table(columns=columns)
        except FileNotFoundError:
            raise
        except (pa.ArrowInvalid, OSError):
            self._name_unreadable(files)
            raise

    def _columns(self, files: list[str], columns: list[str]) -> pa.Table:
        """A few columns of a few (merged) files, without pyarrow.dataset: it imports pandas, ~0.5 s of `status`."""
        schema = pa.schema([SCHEMA.field(c) for c in columns])
        tables = [pa.Table.from_batches([], schema=schema)]  # empty_table() and from_pylist() import pandas
        for f in files:
            try:
                with self.fs.open_input_file(f) as src:
                    tables.append(pq.ParquetFile(src).read(columns=columns).cast(schema))
            except FileNotFoundError:
                raise
            except (pa.ArrowInvalid, OSError):
                self._name_unreadable([f])
                raise
        return pa.concat_tables(tables)

    def _name_unreadable(self, files: list[str]) -> None:
        """Slow path after a failed read: find the file to blame and say what to do with it."""
        for f in files:
            try:
                pq.read_schema(f, filesystem=self.fs)
            except FileNotFoundError:
                continue
            except (pa.ArrowInvalid, OSError) as e:
                raise StoreError(f"{self._uri_of(f)} is not a readable Parquet file ({str(e).splitlines()[0]}); "
                                 f"move it out of the store and run `vpgrid resume {self.root}` to redo its run") from None

    def _uri_of(self, path: str) -> str:
        return path if self.local else f"{self.root.split('://')[0]}://{path}"

    def _consistent(self, read: Callable[[list[pafs.FileInfo]], T]) -> T:
        """`read` over a listing of the run files that no concurrent compaction has torn.

        A listing is not a snapshot: one taken while `compact` adds its merged file and deletes the files it
        merged can miss both. The merged file exists before any deletion starts, so a second listing shows it;
        if the second listing has no merged file the first lacked, the first was whole. A listed file deleted
        before it is read raises FileNotFoundError: list again."""
        files = self._files()
        for _ in range(20):
            try:
                out = read(files)
            except FileNotFoundError:
                files = self._files()
                continue
            again = self._files()
            if {i.path for i in again if _is_part(i)} <= {i.path for i in files if _is_part(i)}:
                return out
            files = again
        raise StoreError(f"store {self.root}: its files kept changing while being read; try again")

    def table(self) -> pa.Table:
        """All runs, one row per run_key."""
        return dedup(self._consistent(lambda files: self._read([i.path for i in files])))

    def frame(self):
        return self.table().to_pandas()

    def scan(self) -> dict[str, tuple[str, Optional[float]]]:
        """run_key -> (status, finished_at), ok winning over failed. One-row files are known by their names
        (finished_at: the file's modification time); only merged files are opened, for three columns."""
        def once(files: list[pafs.FileInfo]) -> dict[str, tuple[str, Optional[float]]]:
            out: dict[str, tuple[str, Optional[float]]] = {}
            merged = []
            for info in files:
                m = ONE_ROW.match(info.base_name)
                if m is None:
                    merged.append(info.path)
                elif out.get(m.group(1), ("",))[0] not in DONE:
                    out[m.group(1)] = (m.group(2), info.mtime.timestamp() if info.mtime else None)
            t = self._columns(merged, ["run_key", "status", "finished_at"])
            for key, status, at in zip(*(t.column(c).to_pylist() for c in ("run_key", "status", "finished_at"))):
                if out.get(key, ("",))[0] not in DONE:
                    out[key] = (status, at)
            return out

        return self._consistent(once)

    def statuses(self) -> dict[str, str]:
        """run_key -> 'ok' | 'failed' | 'rehearsed' (a done row wins when both exist)."""
        return {k: s for k, (s, _) in self.scan().items()}

    def finished_times(self) -> list[float]:
        return [t for _, t in self.scan().values() if t is not None]

    # -- launch bookkeeping ----------------------------------------------------------------------
    def _put_json(self, obj: dict, path: str) -> None:
        self._put(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def _get_json(self, path: str) -> Optional[dict]:
        data = self._get(path)
        try:
            return None if data is None else json.loads(data)
        except json.JSONDecodeError:
            return None  # a torn write of an older version; the next heartbeat rewrites it

    def write_launch(self, info: dict) -> None:
        self._put_json(info, f"{self.meta_dir}/launch.json")

    def launch_info(self) -> dict:
        return self._get_json(f"{self.meta_dir}/launch.json") or {}

    def write_submitted(self, info: dict) -> None:
        """The Ray Job that `vpgrid submit` started for this store (its id and Jobs address), so `status` can say a
        driver is on its way, or that the job failed before its driver wrote anything."""
        self._put_json(info, f"{self.meta_dir}/submitted.json")

    def submitted_info(self) -> dict:
        return self._get_json(f"{self.meta_dir}/submitted.json") or {}

    def heartbeat(self, trial: str, info: dict) -> None:
        self._put_json({**info, "trial": trial, "updated": time.time()}, f"{self.meta_dir}/running/{trial}.json")

    def keep_beating(self, trial: str, info: dict, every: float) -> "_Beat":
        """Rewrite a trial's heartbeat (with `info` as it is then) every `every` seconds until `.stop()`: a run can
        take hours, and a heartbeat that stops is how `status` tells a trial whose node died from a running one."""
        beat = _Beat(self, trial, info, every)
        beat.start()
        return beat

    def end_heartbeat(self, trial: str) -> None:
        self._delete([f"{self.meta_dir}/running/{trial}.json"])

    def heartbeats(self) -> list[dict]:
        """The running trials' heartbeats, read at once (a paper-scale launch runs dozens of trials; on an object
        store each read is a round trip)."""
        def read(path: str) -> Optional[dict]:
            try:
                return self._get_json(path)  # None: removed between listing and reading
            except OSError:  # on S3 a removal mid-read can surface as a failed read, not a missing key
                return None

        paths = sorted(i.path for i in self._list(f"{self.meta_dir}/running")
                       if i.base_name.endswith(".json") and not i.base_name.startswith("."))
        with ThreadPoolExecutor(1 if self.local else 16) as pool:
            return [hb for hb in pool.map(read, paths) if hb is not None]

    def clear_heartbeats(self) -> None:
        self._delete([i.path for i in self._list(f"{self.meta_dir}/running")])

    def put_packs(self, packs: dict[str, bytes]) -> None:
        """Each trial's runs, ROOT/_vpgrid/packs/<trial>.json, written in parallel before the trials start: a
        trial reads its own from the store, so neither Tune's state nor Ray's object store (lost with the driver's
        node) carries them. Packs of an earlier launch are removed first."""
        from concurrent.futures import ThreadPoolExecutor

        folder = f"{self.meta_dir}/packs"
        self._delete([i.path for i in self._list(folder)])
        if self.local:
            self.fs.create_dir(folder, recursive=True)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: self._put(f"{folder}/{kv[0]}.json", kv[1]), packs.items()))

    def pack(self, trial: str) -> bytes:
        data = self._get(f"{self.meta_dir}/packs/{trial}.json")
        if data is None:
            raise StoreError(f"{self.root}: trial {trial}'s pack is missing from {self.meta_dir}/packs: "
                             f"a later launch replaced it; finish with vpgrid resume {self.root}")
        return data


class _Beat(threading.Thread):
    def __init__(self, store: Store, trial: str, info: dict, every: float) -> None:
        super().__init__(daemon=True, name=f"vpgrid-heartbeat-{trial}")
        self.store, self.trial, self.info, self.every = store, trial, info, every
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                self.store.heartbeat(self.trial, dict(self.info))
            except Exception:  # a store blip: the next beat tries again; the runs' rows are what matter
                pass

    def stop(self) -> None:
        """Stop and wait, so no beat lands after the caller removes the heartbeat."""
        self._stop_event.set()
        self.join(timeout=60)
