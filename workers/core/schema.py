"""Argument schemas: what each registered model, compression, dataset and method accepts.

Torch-free on purpose: `vpgrid plan` and `vpgrid list` read them without importing the workers. Each registered
name's card (`workers/core/schemas/<kind>s.py`) is a Schema with the kind's metadata; the registry of that kind
refuses to register a name that has no card there, so the two cannot drift apart.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

REQUIRED = type("Required", (), {"__repr__": lambda self: "required"})()
TYPES = ("int", "float", "str", "bool", "checkpoint")

# Checkpoint formats some model family reads (each model says which of them in its ModelCard.formats).
CHECKPOINT_FORMATS = ("state_dict", "gmp", "lth", "sparse_transfer", "upop", "vvtq")
CHECKPOINT_KEYS = ("format", "path", "url", "sha256", "mask", "mask_sha256")
REMOTE = ("http://", "https://", "s3://", "gs://")  # fetched into a node's cache: a sha256 must verify the copy
SHA256 = re.compile(r"[0-9a-fA-F]{8,64}")


def did_you_mean(word: str, valid) -> str:
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _num(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:g}"


@dataclass(frozen=True)
class Arg:
    """One argument: its type, default (or REQUIRED), allowed values and a one-line help.

    `lo`/`hi` bound numbers; `closed` says which ends are included ("[]", "[)", "(]", "()").
    """

    type: str
    default: Any = REQUIRED
    help: str = ""
    lo: Optional[float] = None
    hi: Optional[float] = None
    closed: str = "[]"
    choices: tuple = ()
    multiple_of: Optional[int] = None
    nullable: bool = False  # None is a valid value (e.g. act_bits: None = float activations)

    def __post_init__(self) -> None:
        assert self.type in TYPES, self.type

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def range_text(self) -> str:
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        return f"{'(' if math.isinf(lo) else self.closed[0]}{_num(lo)}, {_num(hi)}{')' if math.isinf(hi) else self.closed[1]}"

    def describe(self) -> str:
        """E.g. "float in [0, 1)", "'global' | 'layer'", "int, a multiple of 16"."""
        if self.choices:
            text = " | ".join(repr(c) for c in self.choices)
        else:
            text = self.type
            if self.lo is not None or self.hi is not None:
                text += f" in {self.range_text()}"
            if self.multiple_of:
                text += f", a multiple of {self.multiple_of}"
        return text + (" or null" if self.nullable else "")

    def problem(self, key: str, v: Any) -> Optional[str]:
        """None if `v` is valid, else a message that starts with the key and the value."""
        if v is None and self.nullable:
            return None
        if self.type == "checkpoint":
            return None  # checked by check_checkpoint, which knows the field path
        if self.choices:
            if v not in self.choices:
                return (f"{key} {v!r} is not one of {', '.join(repr(c) for c in self.choices)}"
                        + did_you_mean(v, self.choices))
            return None
        ok = {"int": isinstance(v, int), "float": isinstance(v, (int, float)), "str": isinstance(v, str),
              "bool": isinstance(v, bool)}[self.type]
        if isinstance(v, bool) and self.type != "bool":
            ok = False  # YAML `true` is not the number 1
        if not ok:
            return f"{key} {v!r} is not {'an' if self.type == 'int' else 'a'} {self.type}"
        if self.type in ("int", "float"):
            lo_ok = self.lo is None or (v >= self.lo if self.closed[0] == "[" else v > self.lo)
            hi_ok = self.hi is None or (v <= self.hi if self.closed[1] == "]" else v < self.hi)
            if not (lo_ok and hi_ok) or (isinstance(v, float) and math.isnan(v)):
                return f"{key} {v!r} is out of range {self.range_text()}"
            if self.multiple_of and v % self.multiple_of:
                return f"{key} {v!r} is not a multiple of {self.multiple_of}"
        return None


@dataclass(frozen=True)
class Schema:
    """A registered name's one-line help and its arguments."""

    help: str
    args: dict[str, Arg] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {k: a.default for k, a in self.args.items() if not a.required}


def check_args(schema: Schema, args: dict) -> list[str]:
    """Every problem with `args` (unknown keys, missing required ones, bad values), one message each."""
    problems = []
    valid = ", ".join(schema.args) or "none"
    for key in args:
        if key not in schema.args:
            problems.append(f"unknown arg {key!r}{did_you_mean(key, schema.args)} (valid args: {valid})")
    for key, arg in schema.args.items():
        if key not in args:
            if arg.required:
                problems.append(f"arg {key!r} is required ({arg.describe()})")
            continue
        if arg.type == "checkpoint":
            problems += check_checkpoint(args[key], key)
            continue
        p = arg.problem(key, args[key])
        if p:
            problems.append(p)
    return problems


def resolve(schema: Schema, args: dict, where: str) -> dict:
    """Defaults filled in and every value checked; ValueError naming `where` otherwise."""
    problems = check_args(schema, args)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return {**schema.defaults(), **args}


def check_checkpoint(weights: Any, key: str = "weights") -> list[str]:
    """A `weights` value or a compression's `checkpoint`: "pretrained" | "random" | a path or URL string |
    {format, path | url, sha256, mask, mask_sha256}. Structure only: files are read when the run starts."""
    if isinstance(weights, str):
        if weights.startswith(REMOTE):
            return [f"{key} {weights!r}: a URL needs a sha256; give {{url: ..., sha256: ...}}"]
        return []
    if not isinstance(weights, dict):
        return [f"{key} {weights!r} is not 'pretrained', 'random', a path, a URL or a mapping "
                f"{{{', '.join(CHECKPOINT_KEYS)}}}"]
    problems = [f"{key}: unknown key {k!r}{did_you_mean(k, CHECKPOINT_KEYS)} (valid: {', '.join(CHECKPOINT_KEYS)})"
                for k in weights if k not in CHECKPOINT_KEYS]
    if not (weights.get("path") or weights.get("url")):
        problems.append(f"{key}: give a path or a url")
    fmt = weights.get("format", "state_dict")
    if fmt not in CHECKPOINT_FORMATS:
        problems.append(f"{key}.format {fmt!r} is not a known checkpoint format{did_you_mean(fmt, CHECKPOINT_FORMATS)} "
                        f"(known: {', '.join(CHECKPOINT_FORMATS)})")
    for k in ("sha256", "mask_sha256"):
        v = weights.get(k)
        if isinstance(v, int):  # YAML reads 12345678 as a number
            problems.append(f"{key}.{k} {v!r} is a number; quote it as a string of 8 to 64 hex digits")
        elif v is not None and not (isinstance(v, str) and SHA256.fullmatch(v)):
            problems.append(f"{key}.{k} {v!r} is not 8 to 64 hex digits")
    for k in ("path", "url", "mask"):
        v = weights.get(k)
        if v is not None and not isinstance(v, str):
            problems.append(f"{key}.{k} {v!r} is not a string")
    for k, digest in (("url", "sha256"), ("path", "sha256"), ("mask", "mask_sha256")):
        v = weights.get(k)
        if isinstance(v, str) and v.startswith(REMOTE) and not weights.get(digest):
            problems.append(f"{key}: the {k} {v} is fetched, so it needs a {digest} to verify the copy")
    return problems
