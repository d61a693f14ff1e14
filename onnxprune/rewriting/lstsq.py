"""Least-squares recovery: refit each consumer of cut channels (Conv with group 1, Gemm, token MatMul) so that,
on the pruned network's inputs, it reproduces the original network's outputs.

Consumers are refitted in *waves*: a consumer's wave is one after the latest wave of the consumers its input
depends on, so every consumer is fitted on the pruned network with all the consumers upstream of it already
refitted -- exactly the inputs a one-by-one refit in topological order sees -- while the consumers of a wave (a
layer's Q, K and V projections, a decoder's gate and up projections) share one pass. Two
:class:`~onnxprune.measure.stepper.Stepper` s, on the original and on the pruned model, run each node once over
all passes; each wave's targets are taken from the original as the wave comes, and rows enter the normal
equations X^T X, X^T Y batch by batch, so no rows or targets outlive their batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import Graph
from onnxprune.core.progress import Progress
from onnxprune.measure.calibrate import static_batch
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import Session, expose
from onnxprune.measure.stepper import Stepper
from onnxprune.rewriting.edits import Consumer, PrunedEdits, bias_target

__all__ = ["least_squares", "waves"]

_RIDGE = 1e-3
_MAX_ROWS = 20_000
_OVERSAMPLE = 4  # samples drawn per needed sample, so that rows spread over many inputs


@dataclass
class _Rows:
    """The positions one consumer is fitted on, and its normal equations per group as they accumulate."""

    consumer: Consumer
    samples: np.ndarray  # sorted sample indices the rows come from
    where: tuple[np.ndarray, ...]  # (sample position within `samples`, out row, out col) or (sample,)
    gram: list[np.ndarray] = field(default_factory=list)  # per group: X^T X (with a column of ones)
    cross: list[np.ndarray] = field(default_factory=list)  # per group: X^T Y
    intercept: bool = True  # a column of ones: the consumer has a bias to absorb the offset

    def sample_of_row(self) -> np.ndarray:
        return self.samples[self.where[0]]


def least_squares(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                  consumers: list[Consumer], edits: PrunedEdits, data: Dataset, batch_size: int,
                  limit: int | None, seed: int) -> set[int]:
    """Refit consumers wave by wave, each on inputs from the pruned network as already refitted; returns the
    node indices refitted."""
    graph = analysis.graph
    if not any(c.form.refit for c in consumers):  # nothing to refit: expose([]) would leave onnxruntime no graph
        return set()
    shapes = _output_shapes(original, data, [c.node.output[0] for c in consumers if c.form.refit])
    fit = [c for c in consumers if c.form.refit and c.node.output[0] in shapes]
    n = len(data) if limit is None else min(limit, len(data))
    pinned = static_batch(original)
    if pinned not in (None, 1) or not fit:
        return set()
    batch_size = pinned or batch_size
    rng = np.random.default_rng(seed)
    plans = [_choose_rows(c, shapes[c.node.output[0]], n, rng) for c in fit]
    samples = np.unique(np.concatenate([r.samples for r in plans]))
    targets = Stepper(original, data, samples, batch_size)
    inputs = Stepper(pruned, data, samples, batch_size)
    done: set[int] = set()
    with Progress("reconstructing", len(plans)) as bar:
        for wave in waves(pruned, [r.consumer for r in plans]):
            rows = [plans[k] for k in wave]
            _accumulate(rows, targets, inputs, edits)
            for r in rows:
                if _solve(r, graph, edits):
                    done.add(r.consumer.index)
                r.gram, r.cross = [], []
                bar.advance()
    return done


def waves(model: onnx.ModelProto, consumers: list[Consumer]) -> list[list[int]]:
    """The consumers (by position in ``consumers``) in waves: a consumer comes one wave after the latest consumer
    its input depends on in ``model`` (whose nodes are in topological order)."""
    at = {edits_key(c): k for k, c in enumerate(consumers)}
    upstream: dict[str, int] = {}  # tensor -> bitset of the consumers it depends on
    wave_of: dict[int, int] = {}
    for node in model.graph.node:
        bits = 0
        for name in node.input:
            bits |= upstream.get(name, 0)
        k = at.get(node.output[0]) if node.output else None
        if k is not None:
            ahead = [wave_of[j] for j in range(len(consumers)) if bits >> j & 1 and j in wave_of]
            wave_of[k] = 1 + max(ahead, default=-1)
            bits |= 1 << k
        for o in node.output:
            upstream[o] = bits
    out: dict[int, list[int]] = {}
    for k in range(len(consumers)):
        out.setdefault(wave_of.get(k, 0), []).append(k)
    return [out[w] for w in sorted(out)]


def edits_key(c: Consumer) -> str:
    """A consumer's node in any copy of the graph: its (unchanged) first output."""
    return c.node.output[0]


def _output_shapes(model: onnx.ModelProto, data: Dataset, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the tensors ``names``, from one run on the first sample."""
    feeds, _ = next(data.batches(1))
    values = Session(model, edit=expose(names)).run(feeds, names)
    return {n: v.shape[1:] for n, v in zip(names, values)}


def _choose_rows(c: Consumer, out_shape: tuple[int, ...], n: int, rng: np.random.Generator) -> _Rows:
    if c.form.tokens:  # channels last: one row per token
        positions = int(np.prod(out_shape[:-1]))
    else:
        positions = int(np.prod(out_shape[1:])) if c.form.spatial else 1
    rows = min(_MAX_ROWS, n * positions)
    count = min(n, max(-(-rows // positions) * _OVERSAMPLE, 16))  # spread the rows over several samples
    samples = np.sort(rng.choice(n, size=count, replace=False))
    pick = rng.choice(count * positions, size=min(rows, count * positions), replace=False)
    if c.form.tokens:
        return _Rows(c, samples, tuple(np.divmod(pick, positions)))
    if not c.form.spatial:
        return _Rows(c, samples, (pick,))
    which, rest = np.divmod(pick, positions)
    oh, ow = np.divmod(rest, out_shape[2])
    return _Rows(c, samples, (which, oh, ow))


def _accumulate(wave: list[_Rows], targets: Stepper, inputs: Stepper, edits: PrunedEdits) -> None:
    """One pass of both models over the samples: each consumer's rows in each batch enter its normal equations."""
    outs = targets.start(sorted({r.consumer.node.output[0] for r in wave}))
    ins = inputs.start(sorted({edits.node(r.consumer.node).input[0] for r in wave}))
    for r in wave:  # a MatMul without an Add after it has no bias to absorb the offset
        r.intercept = bias_target(r.consumer, edits) is not None
    for b, batch in enumerate(targets.batches):
        chosen = [(r, np.nonzero(np.isin(r.sample_of_row(), batch))[0]) for r in wave]
        if not any(len(rows) for _, rows in chosen):
            continue
        y_all, x_all = targets.values(outs, b), inputs.values(ins, b)
        for r, rows in chosen:
            if len(rows):
                local = np.searchsorted(batch, r.sample_of_row()[rows])
                at = tuple(w[rows] for w in r.where[1:])
                x = np.asarray(x_all[edits.node(r.consumer.node).input[0]], dtype=np.float64)
                _add_rows(r, r.consumer.form.rows(x, local, at), _target_rows(r, y_all[r.consumer.node.output[0]],
                                                                               local, at))
    targets.finish(outs)
    inputs.finish(ins)


def _target_rows(r: _Rows, y: np.ndarray, local: np.ndarray, at: tuple[np.ndarray, ...]) -> np.ndarray:
    """The original outputs at the rows' positions, kept outputs only: [rows, outputs]."""
    c = r.consumer
    if c.keep_out is not None:
        y = np.take(y, c.keep_out, axis=-1 if c.form.tokens else 1)
    if c.form.tokens:
        return y.reshape(y.shape[0], -1, y.shape[-1])[local, at[0]].astype(np.float64)
    if len(at) == 2:
        return y[local, :, at[0], at[1]].astype(np.float64)
    return y[local].reshape(len(local), -1).astype(np.float64)


def _add_rows(r: _Rows, x: np.ndarray, y: np.ndarray) -> None:
    groups = r.consumer.form.groups
    rows = x.reshape(x.shape[0], groups, -1)  # [R, groups, inputs of one group]
    outputs = y.shape[1] // groups
    for j in range(groups):
        xj = rows[:, j]
        if r.intercept:
            xj = np.concatenate([xj, np.ones((xj.shape[0], 1))], axis=1)
        gram, cross = xj.T @ xj, xj.T @ y[:, j * outputs:(j + 1) * outputs]
        if len(r.gram) <= j:
            r.gram.append(gram)
            r.cross.append(cross)
        else:
            r.gram[j] += gram
            r.cross[j] += cross


def _solve(r: _Rows, graph: Graph, edits: PrunedEdits) -> bool:
    """Ridge least squares per conv group (one group for Gemm/MatMul), then write weights and bias back."""
    node, form = r.consumer.node, r.consumer.form
    where = bias_target(r.consumer, edits)
    if not r.gram:
        return False
    thetas = []
    for gram, cross in zip(r.gram, r.cross):
        d = gram.shape[0]
        damp = _RIDGE * max(np.trace(gram) / d, 1e-12)
        try:
            theta = np.linalg.solve(gram + damp * np.eye(d), cross)  # [d, outputs of the group]
        except np.linalg.LinAlgError:
            return False
        if not np.all(np.isfinite(theta)):
            return False
        thetas.append(theta)
    theta = np.concatenate(thetas, axis=1)
    fitted, fitted_bias = (theta[:-1].T, theta[-1]) if r.intercept else (theta.T, None)
    weights, bias = form.store(fitted, fitted_bias, len(r.consumer.keep_in))
    target = edits.node(node)
    dtype = graph.elem_type(node.input[1]) or onnx.TensorProto.FLOAT
    edits.set_input(target, 1, weights, dtype)
    if bias is not None and where is not None:
        holder, port = where
        if form.bias_port is None:  # the Add after the op: its bias plus the fitted offset
            current = edits.value(holder.input[port])
            if current is None:
                return True
            bias = (current.astype(np.float64) + bias).reshape(current.shape)
        edits.set_input(holder, port, bias, dtype)
    return True
