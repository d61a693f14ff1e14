"""One kind of registry for every extension point (op handlers, criteria, recovery methods, bridge ops): named
entries in registration order, each name registered once."""
from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Entries by key; a second entry under a key already taken is refused with ``ValueError``."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._entries: dict[K, V] = {}

    def add(self, key: K, entry: V) -> V:
        if key in self._entries:
            raise ValueError(f"two {self._what} registered under {key!r}")
        self._entries[key] = entry
        return entry

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def __getitem__(self, key: K) -> V:
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(self._entries.items())
