"""Checkpoint files: resolve a path or URL (fetched once into a cache, sha256-verified), then load safely
and strictly: torch files with weights_only, safetensors, and TorchScript archives by reading their tensors only.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from workers.core.errors import VpgridError

# torch is imported where files are read: a rehearsal checks checkpoint files (resolve) without it.


class CheckpointError(VpgridError, ValueError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    """Checkpoint files resolved to local paths and verified, with the format that says how to read them."""

    format: str  # "state_dict", "gmp", "lth", "sparse_transfer", "upop", "vvtq", ...
    files: dict  # role -> local Path: "weights" always, "mask" for lth
    options: dict = field(default_factory=dict)  # the compression's args (bits, sparsity, ...), if any
    source: str = ""  # provenance for the row: files with sha256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, expected: str | None, where: str, digest: Callable[[Path], str] = sha256_file) -> str:
    actual = digest(path)
    if expected is not None:
        expected = expected.lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
            raise CheckpointError(f"{where}: sha256 must be 8 to 64 hex digits, got {expected!r}")
        if not actual.startswith(expected):
            raise CheckpointError(f"{where}: sha256 mismatch: expected {expected}, file {path} has {actual}")
    return actual


@contextmanager
def _written_whole(dest: Path, failure: str):
    """A hidden temporary file beside `dest`, renamed onto it when the block ends well and removed otherwise
    (as a CheckpointError starting with `failure`): the cache never holds half a file."""
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise CheckpointError(f"{failure}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        raise


def _download(url: str, dest: Path) -> None:
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with _written_whole(dest, f"could not download {url}") as f, urllib.request.urlopen(url, timeout=60) as r, \
            Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                     console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(dest.name, total=int(r.headers.get("Content-Length") or 0) or None)
        for chunk in iter(lambda: r.read(1 << 20), b""):
            f.write(chunk)
            bar.advance(task, len(chunk))


def _copy_object(uri: str, dest: Path) -> None:
    """An s3:// or gs:// object into this node's cache."""
    from workers.core.uri import open_uri

    with _written_whole(dest, f"could not copy {uri}") as f:
        fs, path, _ = open_uri(uri)
        with fs.open_input_stream(path) as src:
            for chunk in iter(lambda: src.read(1 << 22), b""):
                f.write(chunk)


def cache_path(url: str, cache_dir: Path) -> Path:
    """Where a URL's file is kept: named by the URL, so a file is found whatever hash prefix is given."""
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    return Path(cache_dir) / "downloads" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def fetch(location: str, sha256: str | None, cache_dir: Path) -> tuple[Path, str]:
    """A local path, or a URL fetched once into cache_dir/downloads; returns (path, its sha256).

    A URL needs a sha256 (a prefix of at least 8 hex digits, as torchvision's file names carry); a local
    path is verified when one is given.
    """
    path = local_file(location)
    if path is not None:
        return path, _verify(path, sha256, str(path))
    dest = remote_cache_path(location, sha256, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        remote = urllib.parse.urlparse(location).scheme in ("s3", "gs")
        _copy_object(location, dest) if remote else _download(location, dest)
    try:
        return dest, _verify(dest, sha256, location)
    except CheckpointError:
        dest.unlink(missing_ok=True)  # never keep a file that failed verification
        raise


def local_file(location: str) -> Path | None:
    """A local checkpoint path (None for a URL), which must be a file."""
    scheme = urllib.parse.urlparse(location).scheme
    if scheme in ("", "file") and not location.startswith("file:"):
        # $VARS let one grid name files on any cluster (e.g. $VPGRID_CKPT/lth/...); the run key keeps the text
        path = Path(os.path.expandvars(location)).expanduser()
        if not path.is_file():
            unset = " (an environment variable in it is not set)" if "$" in str(path) else ""
            raise CheckpointError(f"checkpoint file not found: {path}{unset}")
        return path
    return None


def remote_cache_path(location: str, sha256: str | None, cache_dir: Path) -> Path:
    """Where a URL's file is cached, once the URL is known to be fetchable and verifiable."""
    scheme = urllib.parse.urlparse(location).scheme
    if scheme not in ("http", "https", "file", "s3", "gs"):
        raise CheckpointError(f"{location}: unsupported URL scheme {scheme!r} (use a path, http(s)://, s3://, gs:// or file://)")
    if not sha256:
        raise CheckpointError(f"{location}: a URL needs a sha256 so the download can be verified")
    return cache_path(location, cache_dir)


def resolve(weights: Union[str, dict], options: dict, cache_dir: Path,
            fetcher: Callable[[str, str | None, Path], tuple[Path, str]] | None = None) -> Union[str, Checkpoint]:
    """The grid's `weights` (or a compression's `checkpoint`) -> "pretrained" | "random" | Checkpoint.

    Forms: "pretrained", "random", a path or URL string (format state_dict), or a mapping
    {format, path | url, sha256, mask, mask_sha256}. `fetcher` (default `fetch`): how a file is made local and verified (a rehearsal
    checks without downloading).
    """
    if weights in ("pretrained", "random"):
        return weights
    spec = {"path": weights} if isinstance(weights, str) else dict(weights)
    unknown = set(spec) - {"format", "path", "url", "sha256", "mask", "mask_sha256"}
    if unknown:
        raise CheckpointError(f"checkpoint: unknown keys {sorted(unknown)}; valid: format, path, url, sha256, mask, mask_sha256")
    location = spec.get("path") or spec.get("url")
    if not location:
        raise CheckpointError(f"checkpoint {spec}: give a path or a url")
    files, source = {}, []
    for role, loc, sha in (("weights", location, spec.get("sha256")), ("mask", spec.get("mask"), spec.get("mask_sha256"))):
        if loc:
            files[role], digest = (fetcher or fetch)(str(loc), sha, cache_dir)
            source.append(f"{loc} sha256:{digest[:16]}")
    return Checkpoint(spec.get("format", "state_dict"), files, dict(options), "; ".join(source))


def load_state_dict(path: Union[str, Path], key: str | None = None, stand_ins: bool = False) -> dict:
    """A state dict from .safetensors or a torch file (weights_only: no arbitrary unpickling).

    With `key`, take obj[key]; otherwise unwrap a top-level "state_dict" if there is one. With `stand_ins`, globals
    that weights_only refuses are read as inert `StandIn` classes (see `_stand_ins`): for training checkpoints that
    pickle their optimizer's class beside the weights; the caller takes only the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    obj = _read(path, stand_ins)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path}: expected the weights under {key!r}, found {found}; {_FIX}")
        obj = obj[key]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}; {_FIX}")
    return obj


_FIX = "check the checkpoint's `format` in the grid, or re-download the file"


class StandIn:
    """What a global that weights_only refuses becomes when a loader asks for stand-ins: a class with no behaviour.

    `StandIn.name` is the global the file named. Nothing of the file's choosing is imported or called: the
    unpickler is still torch's weights_only one, which calls only its own allow-list and these stand-ins (an
    attempt to call a stand-in with arguments fails, and the load fails with it).
    """

    name = ""

    def __repr__(self) -> str:
        return f"<stand-in for {self.name}>"


def _stand_ins(path: Path) -> list:
    """(StandIn subclass, name) for every global the file names beyond weights_only's allow-list.

    Why not a hand-written Unpickler that maps unknown globals to stand-ins: torch's weights_only unpickler already
    refuses every opcode and callable outside its audited list, and `safe_globals` with (object, name) pairs lets
    exactly these names through as inert classes, so the file's classes (AC/DC's `optimization.sgd.SGD`, which is not
    even importable outside its repository, and torch's lr schedulers) are never imported, let alone run.
    """
    if not zipfile.is_zipfile(path):  # legacy (pre-1.6) files: torch lists globals only in zip archives
        return []
    import torch

    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return [(type(f"StandIn[{n}]", (StandIn,), {"name": n, "__module__": __name__}), n) for n in names]


def _read(path: Path, stand_ins: bool = False):
    """torch.load (weights_only: never unpickle arbitrary code) or safetensors; any failure names the file."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if stand_ins:
            with torch.serialization.safe_globals(_stand_ins(path)):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a pickle, a forbidden global, a bad safetensors header, ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = lines[0].split(". ")[0] if lines else "unreadable"
        forbidden = re.search(r"GLOBAL ([\w.]+)", str(e))
        if forbidden:
            why = (f"it needs {forbidden.group(1)} to unpickle, which vpgrid refuses (weights_only); "
                   "re-save it as a plain state dict of tensors")
        else:
            why = (f"{type(e).__name__}: {first}; the file is truncated, corrupt or "
                   "not a torch/safetensors checkpoint: re-download it or check its format")
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None


def strip_prefix(state: dict, prefix: str) -> dict:
    """Drop `prefix` from every key that has it (DataParallel's 'module.', wrappers' 'model.')."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_strict(model: "torch.nn.Module", state: dict, where: str) -> None:
    """Load every key or fail naming the mismatches; no silent strict=False."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise CheckpointError(f"{where}: checkpoint does not match the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


# TorchScript archives (OpenAI's CLIP files). `torch.load(weights_only=True)` refuses them and `torch.jit.load` would
# run their code, so `read_torchscript_tensors` reads only the tensors: a restricted unpickler that builds inert
# stand-ins for the archive's module objects, allows no other globals, and reads storages straight from the zip.
# Tested (tests/test_clip.py) on archives today's `torch.jit.save` writes and on the same archives re-packed in the
# records of the 2021/2022 torch.jit that wrote OpenAI's files (folder named after the file saved to, `version`
# first, no `byteorder`/`.data/`; torch.jit.load reads them), not on OpenAI's files themselves: anything unexpected
# in those (a global it does not allow, an extra tensor) fails loudly rather than loading wrong weights.

_STORAGES = {"FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
             "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
             "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}  # torch dtypes, by name


class _ScriptObject:
    """Inert stand-in for a TorchScript object in an archive: keeps the attributes it is given, runs nothing."""

    def __setstate__(self, state: object) -> None:
        self.attrs = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: str) -> None:
        import torch

        self.dtype = getattr(torch, dtype)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return storage.as_strided(size, stride, offset)


def _first(value: object, *_: object) -> object:
    return value


# The only callables an archive may name; TorchScript's typed-list builders are identities.
_SAFE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("collections", "OrderedDict"): OrderedDict,
                 **{("torch.jit._pickle", n): _first for n in ("build_intlist", "build_doublelist", "build_boollist",
                                                               "build_tensorlist", "restore_type_tag")}}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.where, self.storages = zf, prefix, where, {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise CheckpointError(f"{self.where}: refusing to load {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.where}: unexpected persistent id {pid!r}")
        import torch

        _, kind, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            storage = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            if storage.numel() != numel:
                raise CheckpointError(f"{self.where}: storage {key} holds {storage.numel()} values, expected {numel}")
            self.storages[key] = storage
        return self.storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name, without running its code."""
    import torch

    where = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        data = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(data) != 1:
            raise CheckpointError(f"{where}: not a TorchScript archive (found {len(data)} data.pkl records)")
        prefix = data[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() not in (b"", b"little"):
            raise CheckpointError(f"{where}: big-endian archives are not supported")
        root = _TensorOnlyUnpickler(zf.read(data[0]), zf, prefix, where).load()

    out: dict[str, torch.Tensor] = {}

    def walk(obj: object, at: str) -> None:
        for k, v in getattr(obj, "attrs", {}).items():
            if isinstance(v, torch.Tensor):
                out[at + k] = v
            elif isinstance(v, _ScriptObject):
                walk(v, f"{at}{k}.")

    walk(root, "")
    if not out:
        raise CheckpointError(f"{where}: no tensors found in the TorchScript archive")
    return out


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from a torch/safetensors file (weights_only), or the tensors of a TorchScript archive."""
    return read_torchscript_tensors(path) if is_torchscript_archive(path) else load_state_dict(path)
