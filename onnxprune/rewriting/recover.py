"""Training-free recovery of a pruned model from calibration data (numpy only).

* ``bias``: fold the mean contribution of every removed input channel into the consumer's bias,
  b' = b + sum_{c removed} sum_k W[:, c, k] * mu_c (exact for Gemm, exact away from padded borders for Conv).
* ``lstsq``: refit each consumer (Conv with group 1, Gemm) so that, on the pruned network's inputs, it reproduces
  the original network's outputs: ridge-dampened least squares on sampled positions (im2col for Conv),
  weights and bias together; other consumers get the bias compensation.

Both edit a pruned model the pipeline owns; the graph (nodes, names, shapes) does not change.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import LinearForm, handler_for
from onnxprune.core.modelio import tensor_array
from onnxprune.core.progress import Progress
from onnxprune.core.registry import Registry
from onnxprune.measure.calibrate import ChannelStats, static_batch
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import Session, expose
from onnxprune.ops.quantized import dequantized_reads, requantize_recovered
from onnxprune.rewriting.targets import Target, fit_target, pick_rows, residual_target, ridge_fit, values_at

__all__ = ["RECOVERY_MODES", "RecoveryMethod", "recover", "register_recovery"]

_RIDGE = 1e-3
_MAX_ROWS = 20_000
_OVERSAMPLE = 4  # samples drawn per needed sample, so that rows spread over many inputs
_MAX_SYSTEM_BYTES = 1 << 30


@dataclass(frozen=True)
class RecoveryMethod:
    """A registered recovery method: an optional refit of the consumers of cut channels (which returns the node
    indices it refitted), then bias compensation of the others when ``compensate``."""

    name: str
    summary: str
    refit: Callable[..., set[int]] | None = None
    compensate: bool = True


_METHODS: Registry[str, RecoveryMethod] = Registry("recovery methods")


def register_recovery(method: RecoveryMethod) -> RecoveryMethod:
    """Add a recovery method (``--recover NAME``); a name can be registered once."""
    return _METHODS.add(method.name, method)


@dataclass
class _Consumer:
    index: int  # node index in the original graph
    node: onnx.NodeProto
    keep_in: np.ndarray
    keep_out: np.ndarray | None
    form: LinearForm


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis, keep: dict[str, np.ndarray],
            mode: str, stats: dict[str, ChannelStats] | None, data: Dataset | None = None,
            batch_size: int = 32, limit: int | None = None, seed: int = 0,
            reference: tuple[onnx.ModelProto, dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """Apply the recovery method ``mode`` to ``pruned`` in place and return it. ``reference``: the model whose
    outputs refits reproduce with the positions ``pruned`` keeps of its tensors (a schedule's first model, not
    the previous step's); ``original`` and ``keep`` by default."""
    method = _METHODS[mode]
    if not keep or (method.refit is None and not method.compensate):
        return pruned
    consumers = _consumers(analysis, keep)
    reads = dequantized_reads(pruned)  # QDQ weights and biases: what recovery rewrites is quantized again
    edits = _PrunedEdits(pruned)
    refit: set[int] = set()
    if method.refit is not None and data is not None:
        source, kept = reference if reference is not None else (original, None)
        refit = method.refit(source, pruned, analysis, consumers, edits, data, batch_size, limit, seed, kept)
    if not method.compensate:
        edits.finish()
        requantize_recovered(pruned, reads)
        return pruned
    for c in consumers:
        if c.index not in refit and stats is not None and c.node.input[0] in stats:
            _compensate_bias(c, analysis, stats[c.node.input[0]].mean, edits)
    edits.finish()
    requantize_recovered(pruned, reads)
    if data is not None:
        compensated = {c.node.output[0] for c in consumers if c.index not in refit}
        _recalibrate_norms(pruned, compensated, data, batch_size, limit)
    return pruned


def _recalibrate_norms(pruned: onnx.ModelProto, changed: set[str], data: Dataset, batch_size: int,
                       limit: int | None) -> None:
    """Re-estimate the running statistics of the unfused BatchNorms right after a consumer whose inputs lost
    channels and that was not refitted: bias compensation fixes the mean, this fixes the spread too."""
    from onnxprune.measure.calibrate import collect

    norms = [(n, ports) for n in pruned.graph.node if n.input and n.input[0] in changed
             and (ports := _running_statistics(n)) is not None]
    if not norms:
        return
    names = [n.input[0] for n, _ in norms]
    stats = collect(pruned, names, {n: 1 for n in names}, data, batch_size, limit, label="re-estimating norms")
    edits = _PrunedEdits(pruned)
    for node, (mean_port, var_port) in norms:
        st = stats[node.input[0]]
        mean_t = edits.inits.get(node.input[mean_port])
        dtype = mean_t.data_type if mean_t is not None else onnx.TensorProto.FLOAT
        edits.set_input(node, mean_port, st.mean, dtype)
        edits.set_input(node, var_port, st.variance, dtype)
    edits.finish()


def _running_statistics(node: onnx.NodeProto) -> tuple[int, int] | None:
    handler = handler_for(node)
    return handler.running_statistics(node) if handler is not None else None


def _consumers(analysis: Analysis, keep: dict[str, np.ndarray]) -> list[_Consumer]:
    out = []
    seen = set()
    for ref in analysis.weights:
        node = analysis.graph.nodes[ref.node]
        if ref.role != "in" or ref.node in seen:
            continue
        seen.add(ref.node)
        handler = handler_for(node)
        form = handler.linear(node, analysis.graph) if handler is not None else None
        x = node.input[0]
        if form is not None and x in keep:
            out.append(_Consumer(ref.node, node, keep[x], keep.get(node.output[0]), form))
    return sorted(out, key=lambda c: c.index)


class _PrunedEdits:
    """Weight and bias replacements for nodes of the pruned model, found by their (unchanged) output name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.by_output = {n.output[0]: n for n in model.graph.node if n.output}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
        self.taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return tensor_array(self.inits[name])
        if name in self.consts:
            from onnxprune.core.graph import constant_node_value
            return constant_node_value(self.consts[name])
        return None

    def node(self, original: onnx.NodeProto) -> onnx.NodeProto:
        return self.by_output[original.output[0]]

    def set_input(self, node: onnx.NodeProto, port: int, value: np.ndarray, dtype: int) -> None:
        """Point ``node``'s input ``port`` at a new initializer holding ``value`` (never shared)."""
        base = f"{node.name or node.op_type}_recovered_{port}".replace("/", "_")
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        tensor = numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(dtype)), name)
        self.model.graph.initializer.append(tensor)
        self.inits[name] = tensor
        while len(node.input) <= port:
            node.input.append("")
        node.input[port] = name

    def finish(self) -> None:
        """Drop initializers and Constant nodes nothing reads any more."""
        g = self.model.graph
        read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
        kept = [t for t in g.initializer if t.name in read]
        if len(kept) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(kept)
        dead = [k for k, n in enumerate(g.node) if n.op_type == "Constant" and n.output[0] not in read]
        for k in reversed(dead):
            del g.node[k]


def _bias_target(c: _Consumer, edits: _PrunedEdits) -> tuple[onnx.NodeProto, int] | None:
    """The pruned model's node and input port that hold ``c``'s bias: its own, or the Add right after it."""
    if c.form.bias_port is not None:
        return edits.node(c.node), c.form.bias_port
    if c.form.bias_add is not None and c.form.bias_add[0] in edits.by_output:
        return edits.by_output[c.form.bias_add[0]], c.form.bias_add[1]
    return None


def _compensate_bias(c: _Consumer, analysis: Analysis, mean: np.ndarray, edits: _PrunedEdits) -> None:
    graph = analysis.graph
    node, where = c.node, _bias_target(c, edits)
    if where is None:
        return  # no bias input to fold into
    target, port = where
    removed = np.setdiff1d(np.arange(mean.shape[0]), c.keep_in)
    if not len(removed):
        return
    weight = graph.const(node.input[1])
    if weight is None:
        return
    delta = c.form.bias_shift(weight.astype(np.float64), mean, removed)
    if delta is None:
        return
    if c.keep_out is not None:
        delta = delta[c.keep_out]
    bias_name = target.input[port] if len(target.input) > port and target.input[port] else ""
    dtype = graph.elem_type(node.input[1]) or onnx.TensorProto.FLOAT
    current = edits.value(bias_name) if bias_name else None
    base = current.astype(np.float64) if current is not None else np.zeros_like(delta)
    edits.set_input(target, port, base + delta, dtype)  # broadcasts over a [N], [1, N] or [M, N] bias


# -- least squares -----------------------------------------------------------------------------------------
@dataclass
class _Rows:
    """The positions one consumer is fitted on, and the original network's outputs there."""

    consumer: _Consumer
    samples: np.ndarray  # sorted sample indices to run
    where: tuple[np.ndarray, ...]  # (sample position within `samples`, out row, out col) or (sample,)
    target: np.ndarray | None = None  # [rows, outputs] original outputs (kept outputs only)
    keep_target: np.ndarray | None = None  # the target's kept positions (the consumer's kept outputs by default)
    goal: Target = Target("")  # what the target is (see targets.py), set before the targets are collected


def _least_squares(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                   consumers: list[_Consumer], edits: _PrunedEdits, data: Dataset, batch_size: int,
                   limit: int | None, seed: int, reference_keep: dict[str, np.ndarray] | None = None) -> set[int]:
    """Refit consumers in topological order, each on inputs from the pruned network as already refitted."""
    graph = analysis.graph
    if not any(c.form.refit for c in consumers):  # nothing to refit: expose([]) would leave onnxruntime no graph
        return set()
    shapes = _output_shapes(original, data, [c.node.output[0] for c in consumers if c.form.refit])
    fit = [c for c in consumers if c.form.refit and c.node.output[0] in shapes]
    n = len(data) if limit is None else min(limit, len(data))
    pinned = static_batch(original)
    if pinned not in (None, 1):
        return set()
    batch_size = pinned or batch_size
    rng = np.random.default_rng(seed)
    plans = [_choose_rows(c, shapes[c.node.output[0]], n, rng) for c in fit]
    for rows in plans:  # what each refit reproduces: see targets.py
        bias_add = rows.consumer.form.bias_add
        rows.keep_target = (rows.consumer.keep_out if reference_keep is None
                            else reference_keep.get(rows.consumer.node.output[0]))
        rows.goal = fit_target(rows.consumer.node, bias_add[0] if bias_add else None, graph,
                               {c.index for c in fit if c.index > rows.consumer.index})
    _collect_targets(original, plans, data, batch_size)
    done: set[int] = set()
    with Progress("reconstructing", len(plans)) as bar:
        for rows in plans:
            x = _collect_inputs(pruned, rows, data, batch_size)
            other = values_at(((s, y) for s, (y,) in _run_samples(pruned, [rows.goal.other], data, rows.samples,
                              batch_size)), rows.where, rows.consumer.form.tokens) if rows.goal.other else None
            if _solve(rows, x, graph, edits, other):
                done.add(rows.consumer.index)
            bar.advance()
    return done


def _output_shapes(model: onnx.ModelProto, data: Dataset, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the tensors ``names``, from one run on the first sample."""
    feeds, _ = next(data.batches(1))
    values = Session(model, edit=expose(names)).run(feeds, names)
    return {n: v.shape[1:] for n, v in zip(names, values)}


def _choose_rows(c: _Consumer, out_shape: tuple[int, ...], n: int, rng: np.random.Generator) -> _Rows:
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


def _run_samples(model: onnx.ModelProto, names: list[str], data: Dataset, samples: np.ndarray,
                 batch_size: int):
    """Yield (offset, outputs) running ``model`` on the chosen samples only."""
    session = Session(model, edit=expose(names))
    for start in range(0, len(samples), batch_size):
        chosen = samples[start:start + batch_size]
        feeds = data.take(chosen)
        yield start, session.run(feeds, names)


def _collect_targets(original: onnx.ModelProto, plans: list[_Rows], data: Dataset, batch_size: int) -> None:
    needed = np.unique(np.concatenate([r.samples for r in plans])) if plans else np.zeros(0, dtype=np.int64)
    names = sorted({r.goal.name for r in plans})
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {id(r): [] for r in plans}
    for start, values in _run_samples(original, names, data, needed, batch_size):
        out = dict(zip(names, values))
        batch_samples = needed[start:start + batch_size]
        for r in plans:
            y = out[r.goal.name]
            if r.keep_target is not None:
                y = np.take(y, r.keep_target, axis=-1 if r.consumer.form.tokens else 1)
            local = np.searchsorted(batch_samples, r.samples)
            present = (local < len(batch_samples)) & (batch_samples[np.minimum(local, len(batch_samples) - 1)]
                                                      == r.samples)
            for k in np.nonzero(present)[0]:  # the plan's k-th sample sits in this batch
                mine = r.where[0] == k
                if not mine.any():
                    continue
                picked = pick_rows(y[local[k]], mine, r.where, r.consumer.form.tokens)
                parts[id(r)].append((np.nonzero(mine)[0], picked.astype(np.float32)))
        del out
    for r in plans:
        width = parts[id(r)][0][1].shape[1] if parts[id(r)] else 0
        target = np.zeros((len(r.where[0]), width), dtype=np.float32)
        for rows, value in parts[id(r)]:
            target[rows] = value
        r.target = target


def _collect_inputs(pruned: onnx.ModelProto, r: _Rows, data: Dataset, batch_size: int) -> np.ndarray:
    node = r.consumer.node
    blocks = []
    for start, (x,) in _run_samples(pruned, [node.input[0]], data, r.samples, batch_size):
        x = np.asarray(x, dtype=np.float64)
        in_batch = (r.where[0] >= start) & (r.where[0] < start + x.shape[0])
        rows = np.nonzero(in_batch)[0]
        local = r.where[0][rows] - start
        blocks.append((rows, r.consumer.form.rows(x, local, tuple(w[rows] for w in r.where[1:]))))
    width = blocks[0][1].shape[1] if blocks else 0
    xs = np.zeros((len(r.where[0]), width))
    for rows, value in blocks:
        xs[rows] = value
    return xs


def _solve(r: _Rows, x: np.ndarray, graph: Graph, edits: _PrunedEdits, other: np.ndarray | None = None) -> bool:
    """Ridge least squares per conv group (one group for Gemm/MatMul), then write weights and bias back;
    ``other``: the pruned network's other addend of the residual sum the target holds (see targets.py)."""
    node, form = r.consumer.node, r.consumer.form
    assert r.target is not None
    y = r.target.astype(np.float64)
    groups = form.groups
    where = _bias_target(r.consumer, edits)
    intercept = where is not None  # a MatMul without an Add after it has no bias to absorb the offset
    held = other is not None and form.bias_port is None and where is not None  # the sum holds the Add's bias
    y, clip, offset = residual_target(y, other, edits.value(where[0].input[where[1]]) if held and where else None,
                                      r.goal.relu)
    rows = x.reshape(x.shape[0], groups, -1)  # [R, groups, inputs of one group]
    outputs = y.shape[1] // groups
    thetas = []
    for j in range(groups):
        xj = rows[:, j]
        if intercept:
            xj = np.concatenate([xj, np.ones((xj.shape[0], 1))], axis=1)
        cols = slice(j * outputs, (j + 1) * outputs)
        clipped = (clip[:, cols], -offset[:, cols]) if clip is not None else (None, None)
        theta = ridge_fit(xj, y[:, cols], _RIDGE, *clipped)
        if theta is None:
            return False
        thetas.append(theta)  # [d, outputs of the group]
    theta = np.concatenate(thetas, axis=1)
    fitted, fitted_bias = (theta[:-1].T, theta[-1]) if intercept else (theta.T, None)
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


register_recovery(RecoveryMethod("none", "no recovery: the cut model as the plan leaves it", compensate=False))
register_recovery(RecoveryMethod("bias", "fold the removed channels' mean contribution into the consumers' biases"))
register_recovery(RecoveryMethod("lstsq", "refit the consumers by least squares on calibration data (bias "
                                          "compensation where a refit does not apply)", refit=_least_squares))
#: The registered recovery methods, by name.
RECOVERY_MODES = tuple(_METHODS)
