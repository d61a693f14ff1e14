"""``--criterion obs``: structured OBS channel selection (ThiNet / structured Optimal Brain Surgeon).

For every consumer of a group's channels (Conv with group 1, Gemm, MatMul) the Gram matrix H = X^T X of its
input rows (im2col for a Conv) is measured on calibration data. Channels are then removed greedily, one unit at
a time, each time the one whose removal costs the least least-squares reconstruction error summed over the
group's consumers, dL_Q = tr(W_Q [(H^-1)_QQ]^-1 W_Q^T) (each consumer's cost relative to its output energy
tr(W H W^T)), with the OBS update of the remaining weights and of H^-1 after each removal: the choice the
least-squares refit (``--recover lstsq``) recovers best. A channel's score is the cost accumulated up to its
removal (so the greedy order, with magnitudes that compare across groups for ``--global``). Groups whose
consumers are not all measured (more than ``MAX_COLUMNS`` input columns, grouped convolutions, weights that are
not plain constants) keep the ``wanda`` scores. The default criterion with ``--calib``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import handler_for
from onnxprune.measure.calibrate import collect, model_batches
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import Session, expose
from onnxprune.planning.criteria import Criterion, get_criterion, register

__all__ = ["gram_statistics"]

_ROWS = 20_000  # regression rows per consumer
_DAMP = 1e-3
#: Widest consumer input (columns of its rows: channels x kernel) measured; wider ones fall back to ``wanda``
#: (the Gram matrix is columns^2, and the greedy removal costs about channels x columns^2).
MAX_COLUMNS = 1152


def gram_statistics(model: onnx.ModelProto, tensors: list[str], axes: dict[str, int], data: Dataset,
                    batch_size: int = 32, limit: int | None = None) -> Mapping[str, Any]:
    """The channel statistics of ``tensors`` (:func:`collect`) and, under ``("gram", consumer output)``, the
    Gram matrix of each refittable consumer's input rows."""
    stats: dict[Any, Any] = dict(collect(model, tensors, axes, data, batch_size, limit))
    graph = Graph.build(model)
    forms = []
    for node in graph.nodes:
        handler = handler_for(node)
        form = handler.linear(node, graph) if handler is not None and node.input else None
        weight = graph.const_shape(node.input[1]) if form is not None else None
        if (form is not None and form.refit and form.groups == 1 and node.input[0] in axes and weight is not None
                and node.op_type in ("Conv", "Gemm", "MatMul") and form.columns(weight) <= MAX_COLUMNS):
            forms.append((node, form))
    if not forms:
        return stats
    names = sorted({node.input[0] for node, _ in forms})
    session = Session(model, edit=expose(names))
    n = len(data) if limit is None else min(limit, len(data))
    rng = np.random.default_rng(0)
    grams: dict[str, np.ndarray] = {}
    for feeds, part in model_batches(model, data, batch_size, limit):
        values = dict(zip(names, session.run(feeds, names)))
        share = max(1, -(-_ROWS * (part.stop - part.start) // n))
        for node, form in forms:
            x = np.asarray(values[node.input[0]], dtype=np.float64)
            rows = _sample_rows(form, x, share, rng)
            grams[node.output[0]] = grams.get(node.output[0], 0) + rows.T @ rows
    for name, gram in grams.items():
        stats[("gram", name)] = gram
    return stats


def _sample_rows(form: Any, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if form.spatial:
        oh, ow = form.positions(x.shape)
        pick = rng.choice(x.shape[0] * oh * ow, size=min(count, x.shape[0] * oh * ow), replace=False)
        sample, rest = np.divmod(pick, oh * ow)
        return form.rows(x, sample, tuple(np.divmod(rest, ow)))
    if form.tokens:
        tokens = int(np.prod(x.shape[1:-1]))
        pick = rng.choice(x.shape[0] * tokens, size=min(count, x.shape[0] * tokens), replace=False)
        sample, where = np.divmod(pick, tokens)
        return form.rows(x, sample, (where,))
    return form.rows(x, np.arange(x.shape[0]), ())


@dataclass
class _Member:
    """One consumer inside the greedy removal: its weights, inverse Gram and the columns of each unit."""

    weight: np.ndarray  # [outputs, columns]
    inverse: np.ndarray
    columns: dict[int, np.ndarray]  # local unit -> its columns
    energy: float

    def cost(self, unit: int) -> float:
        q = self.columns.get(unit)
        if q is None:
            return 0.0
        block = self.inverse[np.ix_(q, q)]
        wq = self.weight[:, q]
        try:
            return float(np.trace(wq @ np.linalg.solve(block, wq.T))) / self.energy
        except np.linalg.LinAlgError:
            return 0.0

    def remove(self, unit: int) -> None:
        q = self.columns.pop(unit, None)
        if q is None:
            return
        block = self.inverse[np.ix_(q, q)]
        try:
            solved = np.linalg.solve(block, self.inverse[q, :])  # [|q|, columns]
        except np.linalg.LinAlgError:
            return
        self.weight -= self.weight[:, q] @ solved
        self.inverse -= self.inverse[:, q] @ solved
        self.weight[:, q] = 0.0


@dataclass
class _Consumer:
    matrix: np.ndarray  # [outputs, columns]
    inverse: np.ndarray  # (H + damping)^-1
    energy: float  # tr(W H W^T)


def _members(analysis: Analysis, stats: Mapping[Any, Any]
             ) -> dict[int, list[tuple[_Consumer, dict[int, np.ndarray]]]]:
    """Per group id: its measured consumers, each with the columns of every unit of the group it reads."""
    out: dict[int, list[tuple[_Consumer, dict[int, np.ndarray]]]] = {}
    incomplete: set[int] = set()
    for ref in analysis.weights:
        if ref.role != "in" or not len(ref.atoms):
            continue
        node = analysis.graph.nodes[ref.node]
        gids, local = analysis.unit_index(ref.atoms)
        gram = stats.get(("gram", node.output[0]))
        value = analysis.graph.const(ref.name) if gram is not None else None
        handler = handler_for(node)
        form = handler.linear(node, analysis.graph) if handler is not None and value is not None else None
        matrix = form.matrix(value.astype(np.float64)) if form is not None and value is not None else None
        if matrix is None or gram is None or matrix.shape[1] != gram.shape[0] or matrix.shape[1] % len(ref.atoms):
            incomplete.update(int(g) for g in np.unique(gids))
            continue
        width = matrix.shape[1] // len(ref.atoms)  # columns per input channel (a Conv's kernel, a Flatten's block)
        damp = _DAMP * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
        consumer = _Consumer(matrix, np.linalg.inv(gram + damp * np.eye(gram.shape[0])),
                             max(float(np.trace(matrix @ gram @ matrix.T)), 1e-12))
        for gid in np.unique(gids):
            columns: dict[int, list[int]] = {}
            for channel in np.nonzero(gids == gid)[0]:
                columns.setdefault(int(local[channel]), []).extend(range(channel * width, (channel + 1) * width))
            out.setdefault(int(gid), []).append((consumer, {u: np.asarray(c) for u, c in columns.items()}))
    return {gid: m for gid, m in out.items() if gid not in incomplete}


def _greedy(size: int, members: list[_Member]) -> np.ndarray:
    """Scores of one group's units: the cost accumulated up to each unit's greedy removal."""
    left = list(range(size))
    scores = np.zeros(size)
    total = 0.0
    for step in range(size):
        costs = [sum(m.cost(u) for m in members) for u in left]
        k = int(np.argmin(costs))
        unit = left.pop(k)
        total += max(costs[k], 0.0)
        scores[unit] = total + 1e-12 * (step + 1)  # strictly increasing: ties keep the greedy order
        for m in members:
            m.remove(unit)
    return scores


def _obs(analysis: Analysis, seed: int, stats: Mapping[str, Any] | None) -> dict[int, np.ndarray]:
    scores = get_criterion("wanda").score(analysis, seed, stats)
    for gid, consumers in _members(analysis, stats or {}).items():
        members = [_Member(c.matrix.copy(), c.inverse.copy(), dict(columns), c.energy) for c, columns in consumers]
        scores[gid] = _greedy(analysis.groups[gid].size, members)
    return scores


register(Criterion("obs", "calibration", _obs, statistics=gram_statistics))
