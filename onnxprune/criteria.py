"""Importance criteria: a score per channel (unit) of every group; low scores are removed first.

Magnitude criteria read the weight slices the op handlers declared (filters, consumer columns, norm scales),
normalise each slice set by its mean so wide and narrow layers weigh alike, and average them over the group.
"""
from __future__ import annotations

import numpy as np

from .dependency import Analysis
from .errors import UsageError

__all__ = ["CRITERIA", "score"]

CRITERIA = ("l1", "l2", "bn-scale", "random")
_MAGNITUDE_ROLES = ("out", "in", "norm")


def score(analysis: Analysis, criterion: str = "l2", seed: int = 0) -> dict[int, np.ndarray]:
    """Scores per group id, one per unit of the group (blocked groups are scored too, for reports)."""
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if criterion == "random":
        return {g.id: np.random.default_rng([seed, g.id]).random(g.size) for g in analysis.groups}
    if criterion == "bn-scale":
        scores = _magnitude(analysis, "bn-scale", ("norm",))
        fallback = _magnitude(analysis, "l2", _MAGNITUDE_ROLES)
        return {gid: s if np.any(s) else fallback[gid] for gid, s in scores.items()}
    return _magnitude(analysis, criterion, _MAGNITUDE_ROLES)


def _magnitude(analysis: Analysis, kind: str, roles: tuple[str, ...]) -> dict[int, np.ndarray]:
    sums = {g.id: np.zeros(g.size) for g in analysis.groups}
    counts = {g.id: np.zeros(g.size) for g in analysis.groups}
    for ref in analysis.weights:
        if ref.role not in roles or not len(ref.atoms):
            continue
        value = analysis.graph.const(ref.name)
        if value is None or not np.issubdtype(value.dtype, np.floating):
            continue
        rows = ref.view(value).astype(np.float64, copy=False)
        if kind == "l1":
            per = np.abs(rows).sum(axis=1)
        elif kind == "l2":
            per = np.square(rows).sum(axis=1)
        else:  # bn-scale: |gamma|
            per = np.abs(rows[:, 0])
        mean = per.mean()
        if mean > 0:
            per = per / mean
        gids, local = analysis.unit_index(ref.atoms)
        for gid in np.unique(gids):  # a consumer of a Concat reads several groups
            mine = gids == gid
            np.add.at(sums[int(gid)], local[mine], per[mine])
            np.add.at(counts[int(gid)], local[mine], 1.0)
    return {gid: sums[gid] / np.maximum(counts[gid], 1.0) for gid in sums}
