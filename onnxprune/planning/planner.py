"""Planning: from groups and scores to the channels each group loses. A pure function of its inputs."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.dependency import KINDS, Analysis, PruneGroup
from onnxprune.errors import UsageError

__all__ = ["PlanConfig", "choose", "kept_count", "ranked_units"]


def kept_count(size: int, ratio: float) -> int:
    """Channels a group of ``size`` keeps when ``ratio`` of them is removed (the removal rounded down, so a
    group of 3 at 0.5 keeps 2)."""
    return size - math.floor(ratio * size + 1e-9)


def ranked_units(groups: list[PruneGroup], scores: dict[int, np.ndarray]) -> np.ndarray:
    """The group id of every unit of ``groups``, weakest first in one global ranking: each group's scores
    divided by their mean (all zero where the mean is not positive), ties kept in group order."""
    normalised = []
    owner = []
    for g in groups:
        s = scores[g.id]
        mean = s.mean()
        normalised.append(s / mean if mean > 0 else np.zeros_like(s))
        owner.append(np.full(g.size, g.id))
    order = np.argsort(np.concatenate(normalised), kind="stable")
    return np.concatenate(owner)[order]


@dataclass(frozen=True)
class PlanConfig:
    """How much to remove.

    ``ratio`` is the fraction of channels removed from every prunable group (rounded down, so a group of 3 at
    0.5 loses 1); with ``global_ranking`` all groups share one ranking of normalised scores and ``ratio`` is the
    fraction of all prunable channels removed. ``round_to`` makes every kept count a multiple of N (where the
    group is large enough), ``min_channels`` is the fewest channels a group keeps. ``round_to_map`` overrides
    ``round_to`` for the group ids it lists (``--round-to auto`` measures one multiple per group).
    ``kind_ratios`` fixes the ratio of every group of a kind (``{"hidden": 0}`` leaves the hidden width whole);
    rankings and budgets then cover the other groups only.
    """

    ratio: float = 0.5
    global_ranking: bool = False
    round_to: int = 1
    min_channels: int = 1
    round_to_map: Mapping[int, int] | None = None
    kind_ratios: Mapping[str, float] | None = None  # a ratio per group kind ("head", "hidden", ...)

    def multiple(self, gid: int) -> int:
        """The multiple group ``gid``'s kept count is rounded up to."""
        return self.round_to_map.get(gid, self.round_to) if self.round_to_map else self.round_to

    def fixed(self, groups: list[PruneGroup]) -> dict[int, int]:
        """Kept counts of the groups whose kind has its own ratio."""
        ratios = self.kind_ratios or {}
        return {g.id: kept_count(g.size, ratios[g.kind]) for g in groups if g.kind in ratios}

    def validate(self) -> None:
        unknown = sorted(set(self.kind_ratios or {}) - set(KINDS))
        if unknown:
            raise UsageError(f"no group kind '{unknown[0]}' (kinds: {', '.join(KINDS)})")
        for name, r in [("--ratio", self.ratio)] + [(f"--{k}-ratio", v) for k, v in (self.kind_ratios or {}).items()]:
            if not isinstance(r, (int, float)) or math.isnan(r) or not 0.0 <= r < 1.0:
                raise UsageError(f"{name} must be in [0, 1), got {r}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1, got {self.round_to}")
        if any(int(m) < 1 for m in (self.round_to_map or {}).values()):
            raise UsageError("per-group round-to multiples must be >= 1")
        if self.min_channels < 1:
            raise UsageError(f"--min-channels must be >= 1, got {self.min_channels}")


def choose(analysis: Analysis, scores: dict[int, np.ndarray], config: PlanConfig,
           kept: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Sorted local indices of the units each prunable group loses (groups losing nothing are absent).

    ``kept`` gives explicit channel counts to keep per group id, instead of ``config.ratio``.
    """
    config.validate()
    groups = [g for g in analysis.groups if g.prunable]
    fixed = config.fixed(groups)
    if not groups or (kept is None and config.ratio == 0 and all(fixed.get(g.id, g.size) == g.size for g in groups)):
        return {}
    free = [g for g in groups if g.id not in fixed]
    if kept is not None:
        targets = {g.id: min(g.size, kept.get(g.id, fixed.get(g.id, g.size))) for g in groups}
    elif config.global_ranking and free:
        targets = {**_global_targets(free, scores, config.ratio), **fixed}
    else:
        targets = {**{g.id: kept_count(g.size, config.ratio) for g in free}, **fixed}
    removed: dict[int, np.ndarray] = {}
    for g in groups:
        chosen = _select(g, scores[g.id], targets[g.id], config)
        gone = np.setdiff1d(np.arange(g.size), chosen)
        if len(gone):
            removed[g.id] = gone
    _keep_tensors_nonempty(analysis, removed, scores, config)
    return removed


def _keep_tensors_nonempty(analysis: Analysis, removed: dict[int, np.ndarray], scores: dict[int, np.ndarray],
                           config: PlanConfig) -> None:
    """Give back the best channel of any tensor that would lose all of its channels (an uneven Split chunk,
    a Concat part): zero-width tensors are legal ONNX but fragile in runtimes."""
    by_id = {g.id: g for g in analysis.groups}
    for lab in analysis.labels.values():
        gids, local = analysis.unit_index(lab.atoms)
        if not np.all(np.isin(gids, list(removed))):
            continue
        if all(np.isin(local[gids == gid], removed[int(gid)]).all() for gid in np.unique(gids)):
            gid = int(gids[0])
            mine = local[gids == gid]
            best = int(mine[np.argmax(scores[gid][mine])])
            back = _give_back(by_id[gid], removed[gid], scores[gid], best, config.multiple(gid))
            removed[gid] = np.setdiff1d(removed[gid], back)
            if not len(removed[gid]):
                del removed[gid]


def _give_back(g: PruneGroup, gone: np.ndarray, s: np.ndarray, unit: int, round_to: int) -> np.ndarray:
    """Units to restore so that ``unit`` is kept and the group's cells and rounding still hold."""
    if g.cells is not None:  # the same number more per cell (``unit`` first in its own cell)
        step = round_to // math.gcd(round_to, len(g.cells)) if round_to > 1 else 1
        back: list[int] = []
        for cell in g.cells:
            lost = cell[np.isin(cell, gone)]
            lost = lost[np.argsort(-s[lost], kind="stable")]
            if unit in cell:
                lost = np.concatenate([[unit], lost[lost != unit]])
            back.extend(int(u) for u in lost[:step])
        return np.array(back, dtype=np.int64)
    back = [unit]
    rest = gone[gone != unit]
    rest = rest[np.argsort(-s[rest], kind="stable")]
    kept = g.size - len(gone) + 1
    for u in rest:
        if round_to <= 1 or kept % round_to == 0:
            break
        back.append(int(u))
        kept += 1
    return np.array(back, dtype=np.int64)


def _global_targets(groups: list[PruneGroup], scores: dict[int, np.ndarray], ratio: float) -> dict[int, int]:
    ranked = ranked_units(groups, scores)
    n_remove = len(ranked) - kept_count(len(ranked), ratio)
    lost = np.bincount(ranked[:n_remove], minlength=max(g.id for g in groups) + 1)
    return {g.id: g.size - int(lost[g.id]) for g in groups}


def _select(g: PruneGroup, s: np.ndarray, target: int, config: PlanConfig) -> np.ndarray:
    """The units to keep: the best ``target`` (adjusted for minimums, cells and rounding) by score."""
    order_key = -s  # higher score first; ties keep the lower index (stable sort)
    if g.cells is None:
        k = max(target, config.min_channels, 1)
        k = _round_up(k, config.multiple(g.id), g.size)
        return np.sort(np.argsort(order_key, kind="stable")[: min(k, g.size)])
    n_cells, cell = g.cells.shape
    k = max(math.ceil(target / n_cells), math.ceil(config.min_channels / n_cells), 1)
    step = config.multiple(g.id) // math.gcd(config.multiple(g.id), n_cells)
    k = _round_up(k, step, cell)
    picks = np.argsort(order_key[g.cells], axis=1, kind="stable")[:, :k]
    return np.sort(np.take_along_axis(g.cells, picks, axis=1).ravel())


def _round_up(k: int, multiple: int, limit: int) -> int:
    if multiple <= 1:
        return min(k, limit)
    rounded = -(-k // multiple) * multiple
    return rounded if rounded <= limit else limit
