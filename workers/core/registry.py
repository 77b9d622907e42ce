"""A small generic registry: one per kind (models, compressions, datasets, label mappings).

Register with a decorator on the definition; look up by name with a "did you mean" hint.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """An unknown registry name; the message lists what is valid."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plain
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    meta: Any = None
    schema: Any = None  # workers.core.schema.Schema: help and arguments, declared in workers/core/schemas/


class Registry(Generic[T]):
    def __init__(self, kind: str, schemas: dict | None = None) -> None:
        """`schemas`: the kind's torch-free table of {name: Schema}; every registered name must have one."""
        self.kind = kind
        self.schemas = schemas
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, meta: Any = None) -> Callable[[T], T]:
        if self.schemas is not None and name not in self.schemas:
            raise ValueError(f"{self.kind} {name!r} has no argument schema: declare it in "
                             f"workers/core/schemas/{self.kind}s.py")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            schema = self.schemas[name] if self.schemas is not None else None
            self._entries[name] = Entry(name, obj, meta, schema)
            return obj

        return deco

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} (valid: {valid})") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def meta(self, name: str) -> Any:
        return self.entry(name).meta

    def schema(self, name: str) -> Any:
        return self.entry(name).schema

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
