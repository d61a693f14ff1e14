"""Quantization nodes of QDQ and dynamic graphs: ``QuantizeLinear``, ``DequantizeLinear`` and
``DynamicQuantizeLinear``.

Never re-quantize: a cut keeps the original integer codes, so the plan contract holds exactly.

* Activations: a per-tensor Q/DQ passes the channels through; per-channel parameters along the channel axis
  (``axis``) are sliced with the channels; along another axis they stay. Blocked quantization (``block_size``)
  along the channels blocks the group. ``DynamicQuantizeLinear`` (one scale per tensor, computed) passes them.
* Weights: a ``DequantizeLinear`` of constants is *foldable*: the float handlers (Conv, Gemm, MatMul...) see the
  float weight and bias, analyse and cut them as usual; :meth:`DequantizeLinear.refold` then turns the cut float
  values back into cuts of the codes, the per-channel scales and the zero points (int32 biases too). Which codes
  a reader kept is found by running its handler once more on the positions of the codes instead of their values
  (a probe), and checked against the values it wrote. A weight whose readers cut it differently keeps its float
  cut (a valid model, dequantized there).
* Mask oracle: a removed channel of a quantized tensor is the code of 0.0, its zero point
  (:meth:`~onnxprune.core.handlers.Handler.zero_point`).
"""
from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from onnx import NodeProto, TensorProto, helper

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register, same_rank

__all__ = ["QuantizeDequantize", "DynamicQuantize", "param_axis"]

#: Element types of integer codes whose cut codes onnxprune writes back (4-bit types are packed: not sliced here).
CODE_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32)


def param_axis(node: NodeProto, graph, rank: int | None) -> int | None:
    """The axis of a Q/DQ node's per-channel scale (``None`` for a per-tensor scale, -1 when unknown)."""
    shape = graph.shape(node.input[1])
    if shape is not None and math.prod(int(d) if isinstance(d, int) else 2 for d in shape) == 1:
        return None
    if rank is None:
        return -1
    return int(attr(node, "axis", 1)) % max(rank, 1)


@register
class QuantizeDequantize(Handler):
    op_types = ("QuantizeLinear", "DequantizeLinear")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        label = f"{node.op_type} {ctx.node_label(i)}"
        for extra in node.input[1:]:
            other = ctx.labeled(extra)
            if other is not None:
                ctx.block(other.atoms, f"{label} takes channels in its scale or zero point")
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        params = [n for n in node.input[1:] if n]
        if not all(ctx.graph.is_const(n) for n in params):
            ctx.block(lx.atoms, f"{label} has computed quantization parameters")
            return
        axis = param_axis(node, ctx.graph, ctx.graph.rank(node.input[0]))
        if axis == -1:
            ctx.block(lx.atoms, f"{label}: rank unknown, cannot tell the axis of its per-channel scale")
            return
        if axis == lx.axis:
            if attr(node, "block_size", 0):
                ctx.block(lx.atoms, f"{label} quantizes the channels in blocks (block_size)")
                return
            for name in params:
                ctx.weight(name, lx.atoms, "qparam", i)
        ctx.set(node.output[0], lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep, lx = rw.keep(node.output[0]), rw.labeled(node.input[0])
        if keep is None or lx is None:
            return
        if param_axis(node, rw.graph, rw.graph.rank(node.input[0])) == lx.axis:
            for port in range(1, len(node.input)):
                if node.input[port]:
                    rw.set_input(i, port, rw.const(node.input[port])[keep])

    def foldable(self, node: NodeProto) -> bool:
        return node.op_type == "DequantizeLinear"  # a weight's codes are read as the float weight

    def evaluate(self, node: NodeProto, inputs: list[np.ndarray | None]) -> np.ndarray | None:
        """(codes - zero point) * scale in float32, per tensor or per channel (not blocked)."""
        codes, scale = inputs[0], inputs[1]
        zero = inputs[2] if len(inputs) > 2 else None
        if node.op_type != "DequantizeLinear" or codes is None or scale is None or attr(node, "block_size", 0):
            return None
        if scale.size > 1:
            shape = [1] * codes.ndim
            shape[int(attr(node, "axis", 1)) % codes.ndim] = scale.size
            scale = scale.reshape(shape)
            zero = None if zero is None else zero.reshape(shape)
        shifted = codes.astype(np.int64) - (0 if zero is None else zero.astype(np.int64))
        return (shifted.astype(np.float32) * scale.astype(np.float32)).astype(scale.dtype)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def zero_point(self, node: NodeProto, output: int) -> str | None:
        if node.op_type == "DequantizeLinear":
            return ""  # float: 0.0
        return node.input[2] if len(node.input) > 2 else ""

    def refold(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        refold_dequantize(i, node, rw)


@register
class DynamicQuantize(Handler):
    """``DynamicQuantizeLinear(x) -> (codes, scale, zero point)``: one computed scale per tensor. The range always
    holds 0.0, so a removed channel (all 0.0) changes neither the scale nor the kept codes."""

    op_types = ("DynamicQuantizeLinear",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is not None:
            ctx.set(node.output[0], lx.axis, lx.atoms)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def zero_point(self, node: NodeProto, output: int) -> str | None:
        return node.output[2] if output == 0 else ""


# -- cutting a weight's codes --------------------------------------------------------------------------------
class _Probe:
    """A rewrite context that hands a reader the positions of a folded constant's elements instead of their
    values and records what the reader writes back (nothing else is changed)."""

    def __init__(self, rw: RewriteContext, name: str, shape: tuple[int, ...]) -> None:
        self._rw, self._name = rw, name
        self._positions = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        self.written: dict[tuple[int, int], np.ndarray] = {}

    def __getattr__(self, key: str) -> Any:
        return getattr(self._rw, key)

    def const(self, name: str) -> np.ndarray:
        return self._positions if name == self._name else self._rw.const(name)

    def set_input(self, node: int, port: int, value: np.ndarray) -> None:
        self.written[(node, port)] = np.asarray(value)

    def add_input(self, *args: Any) -> None: ...
    def set_attr(self, *args: Any) -> None: ...
    def del_attr(self, *args: Any) -> None: ...
    def replace_node(self, *args: Any) -> None: ...


def _kept_positions(rw: RewriteContext, use: tuple[int, int], name: str, folded: np.ndarray,
                    value: np.ndarray) -> np.ndarray | None:
    """The positions (into the folded constant) of the values the reader ``use`` wrote, or ``None`` when what
    it wrote is not a selection of them."""
    from onnxprune.core.handlers import handler_for

    reader = rw.graph.nodes[use[0]]
    handler = handler_for(reader)
    if handler is None:
        return None
    probe = _Probe(rw, name, folded.shape)
    handler.apply(use[0], reader, cast(RewriteContext, probe))
    positions = probe.written.get(use)
    if positions is None or positions.dtype != np.int64 or positions.shape != value.shape:
        return None
    if positions.size and (positions.min() < 0 or positions.max() >= folded.size):
        return None
    if not np.array_equal(folded.ravel()[positions], value):
        return None
    return positions


def _param_keep(positions: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """The kept indices along the per-channel ``axis``: each kept element's index along it must depend on its
    position along that axis only."""
    if positions.ndim != len(shape):
        return None
    stride = math.prod(shape[axis + 1:])
    along = (positions // stride) % shape[axis]  # (np.unravel_index misreads such arrays in numpy 2.x)
    rows = np.moveaxis(along, axis, 0).reshape(along.shape[axis], -1)
    if rows.shape[1] and not np.all(rows == rows[:, :1]):
        return None
    return rows[:, 0] if rows.shape[1] else np.zeros(0, dtype=np.int64)


def refold_dequantize(i: int, node: NodeProto, rw: RewriteContext) -> None:
    """Replace the float cuts of a weight ``DequantizeLinear``'s output by a DequantizeLinear of cut codes,
    scales and zero points; when that cannot be done, the readers keep their float cuts."""
    graph, name = rw.graph, node.output[0]
    uses = rw.uses(i)
    codes_type = graph.elem_type(node.input[0])
    readers = graph.consumer_nodes(name)
    values = [rw.take_input(*use) for use in uses]
    new = _cut_params(i, node, rw, uses, values) if len(uses) == len(readers) and codes_type in CODE_TYPES \
        and not attr(node, "block_size", 0) and name not in graph.outputs else None
    if new is None:
        for use, value in zip(uses, values):
            assert value is not None
            rw.set_input(use[0], use[1], value)
        return
    inputs, constants = new
    rw.replace_node(i, [helper.make_node("DequantizeLinear", inputs, [name], name=node.name,
                                         **{a.name: helper.get_attribute_value(a) for a in node.attribute})],
                    constants)


def _cut_params(i: int, node: NodeProto, rw: RewriteContext, uses: list[tuple[int, int]],
                values: list[np.ndarray | None]) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """(new inputs, new constants) of the weight's DequantizeLinear, when every reader took the same selection
    of its elements."""
    graph = rw.graph
    folded = graph.const(node.output[0])
    if folded is None:
        return None
    found: list[np.ndarray] = []
    for use, value in zip(uses, values):
        kept = None if value is None else _kept_positions(rw, use, node.output[0], folded, value)
        if kept is None:
            return None
        found.append(kept)
    positions = found[0]
    if any(not np.array_equal(p, positions) for p in found[1:]):
        return None
    codes = rw.const(node.input[0])
    inputs = list(node.input)
    constants = {}
    new_codes = codes.ravel()[positions]
    inputs[0] = rw.fresh(f"{node.input[0]}_pruned")
    constants[inputs[0]] = new_codes
    axis = param_axis(node, graph, codes.ndim)
    if axis is not None:
        keep = _param_keep(positions, codes.shape, axis)
        if keep is None:
            return None
        for port in range(1, len(node.input)):
            if node.input[port]:
                inputs[port] = rw.fresh(f"{node.input[port]}_pruned")
                constants[inputs[port]] = rw.const(node.input[port])[keep]
    return inputs, constants
