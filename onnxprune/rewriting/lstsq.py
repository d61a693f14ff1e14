"""Least-squares recovery: refit each consumer of cut channels (Conv with group 1, Gemm, token MatMul) so that,
on the pruned network's inputs, it reproduces the original network's outputs.

Consumers are refitted in *waves*: a consumer's wave is one after the latest wave of the consumers its input
depends on, so every consumer is fitted on the pruned network with all the consumers upstream of it already
refitted -- exactly the inputs a one-by-one refit in topological order sees -- while the consumers of a wave (a
layer's Q, K and V projections, a decoder's gate and up projections) share one pass. Two
:class:`~onnxprune.measure.stepper.Stepper` s, on the original and on the pruned model, run each node once over
all passes; each wave's targets are taken from the original as the wave comes, and rows enter the normal
equations X^T X, X^T Y batch by batch, so no rows or targets outlive their batch. What a refit reproduces (a
residual sum, an output judged after a ReLU) is :mod:`onnxprune.rewriting.targets`'; a fit behind a ReLU keeps
its rows (up to ``_HOLD_BYTES``; beyond, it fits the pre-activation) for the clipped solve.
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
from onnxprune.rewriting.targets import Target, fit_target, residual_target, ridge_fit

__all__ = ["least_squares", "waves"]

_RIDGE = 1e-3
_MAX_ROWS = 20_000
_OVERSAMPLE = 4  # samples drawn per needed sample, so that rows spread over many inputs
_FLUSH_BYTES = 32 << 20  # rows gathered (as the model computes them) before they enter the normal equations
_HOLD_BYTES = 256 << 20  # rows a fit behind a ReLU may keep (float64, with the targets' bounds)


@dataclass
class _Rows:
    """The positions one consumer is fitted on, and its normal equations per group as they accumulate."""

    consumer: Consumer
    samples: np.ndarray  # sorted sample indices the rows come from
    where: tuple[np.ndarray, ...]  # (sample position within `samples`, out row, out col) or (sample,)
    gram: list[np.ndarray] = field(default_factory=list)  # per group: X^T X (with a column of ones)
    cross: list[np.ndarray] = field(default_factory=list)  # per group: X^T Y
    intercept: bool = True  # a column of ones: the consumer has a bias to absorb the offset
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # rows not yet in the sums
    held: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (X, Y, clip, bound) rows behind a ReLU
    pending_bytes: int = 0
    rows: tuple[np.ndarray, np.ndarray] | None = None  # (X, Y) whole, where there are fewer rows than unknowns
    keep_target: np.ndarray | None = None  # the target's kept positions (the consumer's kept outputs by default)
    goal: Target = Target("")  # what the refit reproduces (targets.py)
    hold: bool | None = None  # rows kept whole for the clipped solve behind a ReLU (decided on the first rows)
    clip: tuple[np.ndarray, np.ndarray] | None = None  # with ``rows``: which targets are bounds, and the bounds
    held_bias: np.ndarray | None = None  # the bias Add's value a residual target also holds (set per wave)

    def sample_of_row(self) -> np.ndarray:
        return self.samples[self.where[0]]

    def dual(self, width: int, outputs: int) -> bool:
        """Far fewer rows than unknowns (a decoder's wide projections on a few short sequences): solve in the
        rows' space, (X X^T + damp I) A = Y, W = X^T A -- the same ridge solution -- where that costs less."""
        if self.consumer.form.groups != 1:
            return False
        rows, d = len(self.where[0]), width + self.intercept
        primal = d * d * rows + d * d * d / 3 + 2 * d * d * outputs
        return rows < d and rows * rows * d + rows ** 3 / 3 + 2 * rows * rows * outputs + 2 * d * rows * outputs \
            < 0.5 * primal


def least_squares(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                  consumers: list[Consumer], edits: PrunedEdits, data: Dataset, batch_size: int,
                  limit: int | None, seed: int, reference_keep: dict[str, np.ndarray] | None = None) -> set[int]:
    """Refit consumers wave by wave, each on inputs from the pruned network as already refitted; returns the
    node indices refitted. ``reference_keep``: the positions of ``original``'s tensors the pruned model keeps
    (a schedule's later steps fit towards its first model); the consumers' kept outputs by default."""
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
    for r in plans:  # what each refit reproduces: a residual sum only when its other addend is final before it
        c = r.consumer
        r.keep_target = c.keep_out if reference_keep is None else reference_keep.get(c.node.output[0])
        later = {q.consumer.index for q in plans if q.consumer.index > c.index}
        r.goal = fit_target(c.node, c.form.bias_add[0] if c.form.bias_add else None, graph, later)
    order = waves(pruned, [r.consumer for r in plans], {k: r.goal.other for k, r in enumerate(plans) if r.goal.other})
    targets = Stepper(original, data, samples, batch_size)
    inputs = Stepper(pruned, data, samples, batch_size)
    done: set[int] = set()
    with Progress("reconstructing", len(plans)) as bar:
        for wave in order:
            rows = [plans[k] for k in wave]
            _accumulate(rows, targets, inputs, edits)
            for r in rows:
                if _solve(r, graph, edits):
                    done.add(r.consumer.index)
                r.gram, r.cross, r.rows, r.clip = [], [], None, None
                bar.advance()
    return done


def waves(model: onnx.ModelProto, consumers: list[Consumer], after: dict[int, str] | None = None
          ) -> list[list[int]]:
    """The consumers (by position in ``consumers``) in waves: a consumer comes one wave after the latest consumer
    its input depends on in ``model`` (whose nodes are in topological order), or that the tensor ``after[k]`` it
    also reads depends on (a residual sum's other addend, which must be final when consumer k is refitted)."""
    at = {edits_key(c): k for k, c in enumerate(consumers)}
    upstream: dict[str, int] = {}  # tensor -> bitset of the consumers it depends on
    for node in model.graph.node:
        bits = 0
        for name in node.input:
            bits |= upstream.get(name, 0)
        k = at.get(node.output[0]) if node.output else None
        for o in node.output:
            upstream[o] = bits | (1 << k) if k is not None else bits
    wave_of: dict[int, int] = {}
    for node in model.graph.node:  # topological order: what a consumer depends on has its wave already
        k = at.get(node.output[0]) if node.output else None
        if k is None:
            continue
        bits = 0
        for name in list(node.input) + ([after[k]] if after and k in after else []):
            bits |= upstream.get(name, 0)
        ahead = [wave_of[j] for j in range(len(consumers)) if bits >> j & 1 and j in wave_of]
        wave_of[k] = 1 + max(ahead, default=-1)
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
    outs = targets.start(sorted({r.goal.name for r in wave}))
    ins = inputs.start(sorted({edits.node(r.consumer.node).input[0] for r in wave}
                              | {r.goal.other for r in wave if r.goal.other}))
    for r in wave:  # a MatMul without an Add after it has no bias to absorb the offset
        where = bias_target(r.consumer, edits)
        r.intercept = where is not None
        held = r.goal.other is not None and r.consumer.form.bias_port is None and where is not None
        r.held_bias = edits.value(where[0].input[where[1]]) if held and where is not None else None
    for b, batch in enumerate(targets.batches):
        chosen = [(r, np.nonzero(np.isin(r.sample_of_row(), batch))[0]) for r in wave]
        if not any(len(rows) for _, rows in chosen):
            continue
        y_all, x_all = targets.values(outs, b), inputs.values(ins, b)
        for r, rows in chosen:
            if len(rows):
                local = np.searchsorted(batch, r.sample_of_row()[rows])
                at = tuple(w[rows] for w in r.where[1:])
                x = r.consumer.form.rows(x_all[edits.node(r.consumer.node).input[0]], local, at)
                y = _pick(r, y_all[r.goal.name], local, at, r.keep_target)
                other = _pick(r, x_all[r.goal.other], local, at, None) if r.goal.other else None
                y, clip, offset = residual_target(y, other, r.held_bias, r.goal.relu)
                if r.hold is None:
                    r.hold = clip is not None and len(r.where[0]) * (x.shape[1] + 2 * y.shape[1] + 1) * 8 <= _HOLD_BYTES
                _add_rows(r, x, y, (clip, -offset) if r.hold and clip is not None else None)
    targets.finish(outs)
    inputs.finish(ins)
    for r in wave:
        _flush(r, last=True)


def _pick(r: _Rows, y: np.ndarray, local: np.ndarray, at: tuple[np.ndarray, ...], keep: np.ndarray | None
          ) -> np.ndarray:
    """A batch's values of a tensor shaped like the consumer's output at the rows' positions, its ``keep``
    positions only (all where ``None``): [rows, outputs]."""
    c = r.consumer
    if keep is not None:
        y = np.take(y, keep, axis=-1 if c.form.tokens else 1)
    if c.form.tokens:
        return y.reshape(y.shape[0], -1, y.shape[-1])[local, at[0]]
    if len(at) == 2:
        return y[local, :, at[0], at[1]]
    return y[local].reshape(len(local), -1)


def _add_rows(r: _Rows, x: np.ndarray, y: np.ndarray, clip: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Gather rows (as computed: float32 rows convert to float64 exactly later); a batch of one sample gives few
    rows, and adding each batch's X^T X to a wide system would cost a pass over it per batch. Rows with ``clip``
    (bounds behind a ReLU) are kept whole for the clipped solve."""
    if clip is not None:
        r.held.append((x, y, *clip))
        return
    r.pending.append((x, y))
    r.pending_bytes += x.nbytes + y.nbytes
    if r.pending_bytes >= _FLUSH_BYTES and not r.dual(x.shape[1], y.shape[1]):
        _flush(r)


def _flush(r: _Rows, last: bool = False) -> None:
    """Add the gathered rows to the normal equations, in float64 (the ``last`` time: keep them whole where
    solving in the rows' space pays, or where a ReLU's clipped solve needs them)."""
    if last and r.held:
        x, y, clip, bound = (np.concatenate([h[k] for h in r.held]) for k in range(4))
        r.held = []
        r.rows = (_ones(x.astype(np.float64)) if r.intercept else x.astype(np.float64), y.astype(np.float64))
        r.clip = (clip, bound)
        return
    if not r.pending:
        return
    x = np.concatenate([p[0] for p in r.pending]).astype(np.float64)
    y = np.concatenate([p[1] for p in r.pending]).astype(np.float64)
    r.pending, r.pending_bytes = [], 0
    if last and not r.gram and r.dual(x.shape[1], y.shape[1]):
        r.rows = (_ones(x) if r.intercept else x, y)
        return
    groups = r.consumer.form.groups
    rows = x.reshape(x.shape[0], groups, -1)  # [R, groups, inputs of one group]
    outputs = y.shape[1] // groups
    for j in range(groups):
        xj = _ones(rows[:, j]) if r.intercept else rows[:, j]
        gram, cross = xj.T @ xj, xj.T @ y[:, j * outputs:(j + 1) * outputs]
        if len(r.gram) <= j:
            r.gram.append(gram)
            r.cross.append(cross)
        else:
            r.gram[j] += gram
            r.cross[j] += cross


def _ones(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def _ridge(system: np.ndarray, rhs: np.ndarray, trace: float, d: int) -> np.ndarray | None:
    """``solve(system + damp I, rhs)``, damp = _RIDGE x the mean diagonal of X^T X (``trace`` / ``d``), in
    place; ``None`` where it fails."""
    system[np.diag_indices_from(system)] += _RIDGE * max(trace / d, 1e-12)
    try:
        theta = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:
        return None
    return theta if np.all(np.isfinite(theta)) else None


def _solve(r: _Rows, graph: Graph, edits: PrunedEdits) -> bool:
    """Ridge least squares per conv group (one group for Gemm/MatMul), then write weights and bias back."""
    node, form = r.consumer.node, r.consumer.form
    where = bias_target(r.consumer, edits)
    thetas: list[np.ndarray | None] = []
    if r.rows is not None and r.clip is not None:  # behind a ReLU: per conv group, the clipped solve
        x, y = r.rows
        groups, (clip, bound) = form.groups, r.clip
        width, outputs = (x.shape[1] - r.intercept) // groups, y.shape[1] // groups
        for j in range(groups):
            xj = x[:, j * width:(j + 1) * width]
            if r.intercept:
                xj = np.concatenate([xj, x[:, -1:]], axis=1)
            cols = slice(j * outputs, (j + 1) * outputs)
            thetas.append(ridge_fit(xj, y[:, cols], _RIDGE, clip[:, cols], bound[:, cols]))
    elif r.rows is not None:
        x, y = r.rows
        alpha = _ridge(x @ x.T, y, float(np.einsum("ij,ij->", x, x)), x.shape[1])
        thetas = [x.T @ alpha] if alpha is not None else []
    else:
        thetas = [_ridge(gram, cross, float(np.trace(gram)), gram.shape[0]) for gram, cross in zip(r.gram, r.cross)]
    solved = [t for t in thetas if t is not None]
    if not solved or len(solved) != len(thetas):
        return False
    theta = np.concatenate(solved, axis=1)  # [unknowns, outputs]
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
