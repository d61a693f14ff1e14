"""Importance criteria: a score per channel (unit) of every group; low scores are removed first.

Magnitude criteria read the weight slices the op handlers declared (filters, consumer columns, norm scales),
normalise each slice set by its mean so wide and narrow layers weigh alike, and average them over the group.
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.dependency import Analysis
from onnxprune.errors import UsageError

__all__ = ["CRITERIA", "DATA_CRITERIA", "GRADIENT_CRITERIA", "score"]

DATA_CRITERIA = ("mean-act", "apoz", "act-var", "wanda")
#: Criteria computed from gradients through the torch bridge (:mod:`onnxprune.training.taylor`).
GRADIENT_CRITERIA = ("taylor",)
CRITERIA = ("l1", "l2", "bn-scale", "random", *DATA_CRITERIA, *GRADIENT_CRITERIA)
_MAGNITUDE_ROLES = ("out", "in", "norm")


def score(analysis: Analysis, criterion: str = "l2", seed: int = 0, stats: dict | None = None
          ) -> dict[int, np.ndarray]:
    """Scores per group id, one per unit of the group (blocked groups are scored too, for reports).

    Data-driven criteria need ``stats`` (:func:`onnxprune.measure.calibrate.collect` over the consumer inputs, or for
    ``taylor`` the per-channel arrays of :func:`onnxprune.training.taylor.taylor_statistics`); groups no consumer reads
    fall back to ``l2``.
    """
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if criterion in DATA_CRITERIA + GRADIENT_CRITERIA:
        if stats is None:
            raise UsageError(f"criterion '{criterion}' needs calibration data (--calib)")
        measured = _activation(analysis, criterion, stats)
        fallback = _magnitude(analysis, "l2", _MAGNITUDE_ROLES)
        return {gid: s if np.any(s) else fallback[gid] for gid, s in measured.items()}
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


def _activation(analysis: Analysis, kind: str, stats: dict) -> dict[int, np.ndarray]:
    """Per-unit scores from channel statistics of the consumer inputs (and, for act-var/wanda, the consumer
    weight columns that read them)."""
    sums = {g.id: np.zeros(g.size) for g in analysis.groups}
    counts = {g.id: np.zeros(g.size) for g in analysis.groups}

    def add(atoms: np.ndarray, per: np.ndarray) -> None:
        mean = per.mean()
        per = per / mean if mean > 0 else per
        gids, local = analysis.unit_index(atoms)
        for gid in np.unique(gids):
            mine = gids == gid
            np.add.at(sums[int(gid)], local[mine], per[mine])
            np.add.at(counts[int(gid)], local[mine], 1.0)

    if kind in ("mean-act", "apoz", "taylor"):
        for name, st in stats.items():
            lab = analysis.labels.get(name)
            if lab is not None:
                add(lab.atoms, st if kind == "taylor" else st.mean_activation if kind == "mean-act" else 1.0 - st.apoz)
    else:
        for ref in analysis.weights:
            name = analysis.graph.nodes[ref.node].input[0]
            if ref.role != "in" or name not in stats:
                continue
            value = analysis.graph.const(ref.name)
            column = np.square(ref.view(value).astype(np.float64)).sum(axis=1)
            st = stats[name]
            per = st.variance * column if kind == "act-var" else np.sqrt(column) * st.rms
            add(ref.atoms, per)
    return {gid: np.where(counts[gid] > 0, sums[gid] / np.maximum(counts[gid], 1.0), 0.0) for gid in sums}
