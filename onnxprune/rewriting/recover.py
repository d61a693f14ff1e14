"""Training-free recovery of a pruned model from calibration data (numpy only).

* ``bias``: fold the mean contribution of every removed input channel into the consumer's bias,
  b' = b + sum_{c removed} sum_k W[:, c, k] * mu_c (exact for Gemm, exact away from padded borders for Conv).
* ``lstsq``: refit each consumer (Conv with group 1, Gemm) so that, on the pruned network's inputs, it reproduces
  the original network's outputs: ridge-dampened least squares on sampled positions (im2col for Conv),
  weights and bias together (:mod:`onnxprune.rewriting.lstsq`); other consumers get the bias compensation.

Both edit a pruned model the pipeline owns; the graph (nodes, names, shapes) does not change.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.handlers import handler_for
from onnxprune.core.registry import Registry
from onnxprune.measure.calibrate import ChannelStats
from onnxprune.measure.data import Dataset
from onnxprune.ops.quantized import dequantized_reads, requantize_recovered
from onnxprune.rewriting.edits import Consumer, PrunedEdits, bias_target
from onnxprune.rewriting.lstsq import least_squares

__all__ = ["RECOVERY_MODES", "RecoveryMethod", "recover", "register_recovery"]


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
    edits = PrunedEdits(pruned)
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
    edits = PrunedEdits(pruned)
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


def _consumers(analysis: Analysis, keep: dict[str, np.ndarray]) -> list[Consumer]:
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
            out.append(Consumer(ref.node, node, keep[x], keep.get(node.output[0]), form))
    return sorted(out, key=lambda c: c.index)


def _compensate_bias(c: Consumer, analysis: Analysis, mean: np.ndarray, edits: PrunedEdits) -> None:
    graph = analysis.graph
    node, where = c.node, bias_target(c, edits)
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


register_recovery(RecoveryMethod("none", "no recovery: the cut model as the plan leaves it", compensate=False))
register_recovery(RecoveryMethod("bias", "fold the removed channels' mean contribution into the consumers' biases"))
register_recovery(RecoveryMethod("lstsq", "refit the consumers by least squares on calibration data (bias "
                                          "compensation where a refit does not apply)", refit=least_squares))
#: The registered recovery methods, by name.
RECOVERY_MODES = tuple(_METHODS)
