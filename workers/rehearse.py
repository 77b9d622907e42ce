"""A rehearsal's runs: each checks on its node the inputs the real run would read, then sleeps its estimated
seconds (the throughput table's, divided by the speed-up) and gives a row with status `rehearsed`, or `failed`
with the error the real run would give at that input, naming the node. No weights are loaded, no GPU touched,
and torch is not imported (docs/scale.md).

Checked: the weights and the compression's checkpoint files (present, readable, of the declared sha256; a URL's
file only when it is already in the node's cache, else it would be fetched at run time), and an image dataset's
files under the data root (torchvision's layout) or a text or DNA task's (workers/data/text.py's). The grid's names and arguments were checked on the driver, as
for a real launch. Plain functions, no Ray: the adapter and the tests call the same code.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

from workers.checkpoints import CheckpointError, _verify, local_file, remote_cache_path, resolve, sha256_file
from workers.core.spec import RunResult, RunSpec


class Digests:
    """sha256 of the files this node has checked, kept in the node's cache by path, size and modification time,
    so a file is hashed once per node, not once per run (a 1 GB checkpoint takes seconds)."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / "rehearsal" / "sha256.json"
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.known:
            with open(path, "rb") as f:  # unreadable: the same PermissionError the real run meets
                f.read(1)
            self.known[key] = sha256_file(path)
            self._save()
        return self.known[key]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(self.known))
        os.replace(tmp, self.path)  # concurrent trials on a node: the last whole file wins


def check_fetch(digests: Digests):
    """A `fetch` for checkpoints.resolve that checks instead of downloading."""
    def fetch(location: str, sha256: Optional[str], cache_dir: Path) -> tuple[Path, str]:
        path = local_file(location)
        if path is not None:
            return path, _verify(path, sha256, str(path), digests)
        path = remote_cache_path(location, sha256, cache_dir)
        if not path.exists():
            return path, "fetched at run time"  # the real run downloads it; nothing here to check
        return path, _verify(path, sha256, location, digests)
    return fetch


def check_inputs(spec: RunSpec, cache_dir: Path, data_root: Optional[str], digests: Digests) -> None:
    """Raise what the real run would raise at its first missing or wrong input."""
    from workers.core.schemas import DATASETS
    from workers.core.schemas.layouts import TEXT_TASKS, check_layout, text_file

    args = dict(spec.compression_args)
    checkpoint = args.pop("checkpoint", None)
    resolve(checkpoint if checkpoint is not None else spec.weights, args, cache_dir, check_fetch(digests))
    if spec.dataset in DATASETS and DATASETS[spec.dataset].layout:
        from workers.core.schema import resolve as with_defaults

        ds_args = with_defaults(DATASETS[spec.dataset], dict(spec.dataset_args), f"dataset {spec.dataset!r}")
        check_layout(spec.dataset, data_root, bool(ds_args.get("download")), ds_args)
    elif spec.dataset in TEXT_TASKS:  # the text loader's own look-up, so its error
        for split in ("train", "test"):
            text_file(spec.dataset, data_root, split)


def rehearse_pack(specs: list[RunSpec], seconds: list[float], startup_s: float, speedup: float, cache_dir: Path,
                  data_root: Optional[str], trial: str = "", node: str = "") -> Iterator[RunResult]:
    """Each run's row, in order: inputs checked, then its estimated seconds slept (the trial's start-up first).
    A failed row's error ends with where it failed: `(on HOST)`, or `(on HOST node ID)` given the Ray node."""
    host, digests, checked = socket.gethostname(), Digests(cache_dir), {}
    where = f"{host} node {node[:12]}" if node else host
    time.sleep(startup_s / speedup)
    for spec, secs in zip(specs, seconds):
        started = time.time()
        what = (json.dumps([spec.weights, spec.compression_args], sort_keys=True, default=str), spec.dataset,
                json.dumps(spec.dataset_args, sort_keys=True))
        if what not in checked:  # the runs of a pack share their inputs: check each once
            try:
                check_inputs(spec, cache_dir, data_root, digests)
                checked[what] = None
            except (CheckpointError, OSError, ValueError) as e:
                checked[what] = f"{type(e).__name__}: {e} (on {where})"
        common = dict(started_at=started, trial=trial, host=host, pid=os.getpid(), device="rehearsal")
        if checked[what] is not None:
            yield RunResult.for_spec(spec, "failed", error=checked[what], finished_at=time.time(), **common)
            continue
        time.sleep(secs / speedup)
        yield RunResult.for_spec(spec, "rehearsed", train_seconds=secs, finished_at=time.time(), **common)
