"""A small named registry: explicit registration, refuses collisions, did-you-mean on unknown names."""

from __future__ import annotations

import difflib
from typing import Generic, Iterable, Iterator, TypeVar

from tsugiki.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: object, known: Iterable[str], n: int = 1, *, quoted: bool = True) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` (up to ``n``, comma-separated; ``quoted=False``:
    bare names), or ``""``: the one suffix every unknown-name error in tsugiki ends its first clause with."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=n)
    return f"; did you mean {', '.join(repr(c) if quoted else c for c in close)}?" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return list(self._items)
