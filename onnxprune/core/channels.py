"""Channel atoms and their ties: the arithmetic under channel groups.

Every op that *creates* channels (a Conv's filters, a Gemm's outputs) allocates one **atom** per channel. Tensors
carry a :class:`Labeled` axis: the atom behind each position along their channel axis. Ops that couple channels
(a residual ``Add``, a depthwise Conv) **tie** atoms position by position; a union-find over atoms turns ties
into *units* (channels that must be removed together) and units into groups. Union and find are vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Labeled", "UnionFind"]


@dataclass(frozen=True)
class Labeled:
    """The channel axis of one tensor and the atom at each position along it."""

    axis: int
    atoms: np.ndarray  # int64, one atom per position

    @property
    def size(self) -> int:
        return int(self.atoms.shape[0])


class UnionFind:
    """A growable, vectorised union-find over integer ids (roots are the smallest id of a class)."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._parent.shape[0])

    def add(self, count: int) -> np.ndarray:
        """Allocate ``count`` new singleton ids and return them."""
        start = len(self)
        ids = np.arange(start, start + count, dtype=np.int64)
        self._parent = np.concatenate([self._parent, ids])
        return ids

    def find(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        roots = self._parent[ids]
        while True:
            nxt = self._parent[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        self._parent[ids] = roots  # path compression
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie ``a[i]`` with ``b[i]`` for every i."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:
            raise ValueError(f"cannot tie {a.shape[0]} channels to {b.shape[0]}")
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            lo = np.minimum(ra[differ], rb[differ])
            hi = np.maximum(ra[differ], rb[differ])
            self._parent[hi] = lo  # conflicting writes are settled by the next round

    def roots(self) -> np.ndarray:
        return self.find(np.arange(len(self), dtype=np.int64))
