"""Budgets: how many channels to remove so that the pruned model keeps a given fraction of its MACs or
parameters. One global ranking of normalised scores, a binary search over how far down it to cut, and a cost
model evaluated on kept fractions -- no rewrite per candidate."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.measure.cost import CostModel
from onnxprune.planning.planner import PlanConfig, choose, ranked_units

__all__ = ["CostModel", "plan_for_budget"]


def plan_for_budget(model: onnx.ModelProto, analysis: Analysis, scores: dict[int, np.ndarray],
                    config: PlanConfig, kind: str, target: float, input_shapes: dict[str, list[int]]
                    ) -> dict[int, np.ndarray]:
    """The removal (as :func:`onnxprune.planning.planner.choose` returns it) that keeps ``target`` of the ``kind``
    ("macs" or "params") as closely as the channel granularity allows, never above it when reachable."""
    cost = CostModel(model, analysis, input_shapes)
    groups = [g for g in analysis.groups if g.prunable]
    fixed = config.fixed(groups)
    groups = [g for g in groups if g.id not in fixed]  # kinds with their own ratio keep it
    if not groups:
        return choose(analysis, scores, config, fixed)
    who = ranked_units(groups, scores)
    sizes = {g.id: g.size for g in groups}
    which = 0 if kind == "macs" else 1

    def removal(n: int) -> dict[int, np.ndarray]:
        lost = np.bincount(who[:n], minlength=max(sizes) + 1)
        kept = {gid: size - int(lost[gid]) for gid, size in sizes.items()}
        return choose(analysis, scores, config, {**kept, **fixed})

    lo, hi = 0, len(who)
    best = removal(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = removal(mid)
        if cost.fractions(candidate)[which] <= target:
            best, hi = candidate, mid
        else:
            lo = mid + 1
    return best
