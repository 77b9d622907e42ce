"""A small generic registry: one per kind (models, compressions, datasets, methods, label mappings).

Everything declarative about a name (help, arguments, metadata) is its card, declared torch-free in
workers/core/schemas/; the decorator on the definition only attaches the builder. Look up by name with a
"did you mean" hint.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """An unknown registry name; the message lists what is valid."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plain
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T  # the builder
    card: Any = None  # the name's card from workers/core/schemas/ (None for a kind without cards)


class Registry(Generic[T]):
    def __init__(self, kind: str, cards: Mapping[str, Any] | None = None) -> None:
        """`cards`: the kind's torch-free table of {name: card}; every registered name must have one."""
        self.kind = kind
        self.cards = cards
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if self.cards is not None and name not in self.cards:
            # the table's file is named after the kind's last word: "label mapping" -> mappings.py
            raise ValueError(f"{self.kind} {name!r} has no card: declare it in "
                             f"workers/core/schemas/{self.kind.split()[-1]}s.py")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, None if self.cards is None else self.cards[name])
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

    def card(self, name: str) -> Any:
        return self.entry(name).card

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
