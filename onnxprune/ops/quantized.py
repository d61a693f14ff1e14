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
  (a probe), and checked against the values it wrote. A weight whose readers cut it differently, and 4-bit
  (INT4/UINT4) codes, keep their float cut (a valid, mask-equivalent model, dequantized there). A constant the
  quantizer quantizes in the graph (Identity -> QuantizeLinear -> DequantizeLinear, a shared bias) folds to its
  codes, computed as onnxruntime rounds them.
* Recovery: a weight or bias that least squares or bias compensation rewrote in float goes back to codes the
  way the original was quantized (:func:`requantize_recovered`: new values need new codes and scales).
* Mask oracle: a removed channel of a quantized tensor is the code of 0.0, its zero point
  (:meth:`~onnxprune.core.handlers.Handler.zero_point`).
"""
from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register, same_rank

__all__ = ["QuantizeDequantize", "DynamicQuantize", "dequantized_reads", "param_axis", "requantize_recovered"]

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
        """A weight's codes are read as the float weight; a constant quantized in the graph (a bias the quantizer
        shares through Identity -> QuantizeLinear -> DequantizeLinear) folds to its codes. Blockwise parameters
        (``block_size``) do not fold: the reader sees a computed weight and keeps its channels."""
        return not attr(node, "block_size", 0)

    def evaluate(self, node: NodeProto, inputs: list[np.ndarray | None]) -> np.ndarray | None:
        """DequantizeLinear: (codes - zero point) * scale in float32; QuantizeLinear: the codes; per tensor or
        per channel (not blocked)."""
        codes, scale = inputs[0], inputs[1]
        zero = inputs[2] if len(inputs) > 2 else None
        if codes is None or scale is None or attr(node, "block_size", 0):
            return None
        if node.op_type == "QuantizeLinear":
            return _quantize_linear(node, codes, scale, zero)
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


def _quantize_linear(node: NodeProto, x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    """QuantizeLinear on constants as onnxruntime computes it: x / scale in float32, rounded half to even, plus
    the zero point, saturated to its type (uint8 without one)."""
    dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[int(attr(node, "axis", 1)) % x.ndim] = scale.size
        scale = scale.reshape(shape)
        zero = None if zero is None else zero.reshape(shape)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + (0 if zero is None else zero.astype(np.float32))
    low, high = _BOUNDS[str(dtype)] if str(dtype) in _BOUNDS else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    return np.clip(q, low, high).astype(dtype)


#: Ranges of the 4-bit types (ml_dtypes, which np.iinfo does not know).
_BOUNDS = {"int4": (-8, 7), "uint4": (0, 15)}


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


# -- recovery: new float weights go back to codes ----------------------------------------------------------------
def dequantized_reads(model: onnx.ModelProto) -> dict[tuple[str, int], str]:
    """(reader's output, port) -> the weight ``DequantizeLinear`` output it reads, for readers of quantized
    constants (what :func:`requantize_recovered` compares against after recovery)."""
    inits = {t.name for t in model.graph.initializer}
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx")
          and n.input[0] in inits and not attr(n, "block_size", 0)}
    return {(n.output[0], p): name for n in model.graph.node for p, name in enumerate(n.input) if name in dq}


def requantize_recovered(model: onnx.ModelProto, reads: dict[tuple[str, int], str]) -> int:
    """Edit ``model`` in place after recovery: a weight or bias that recovery rewrote in float where the reader
    read a ``DequantizeLinear`` of codes is quantized again the way the codes were (int8/uint8 weights per
    channel or per tensor, symmetric when the zero points were all 0; int32 biases with scale = input scale x
    weight scale); the old codes go. Returns how many were quantized; values it cannot quantize stay float."""
    from onnx import numpy_helper

    if not reads:
        return 0
    nodes = {n.output[0]: n for n in model.graph.node if n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    done = 0
    for (out, port), old in sorted(reads.items(), key=lambda kv: kv[0][1]):  # weights (port 1) before biases
        reader, dq = nodes.get(out), producer.get(old)
        if reader is None or dq is None or port >= len(reader.input) or reader.input[port] == old:
            continue
        new = inits.get(reader.input[port])
        if new is None or new.data_type != TensorProto.FLOAT:
            continue
        codes_t = inits[dq.input[0]]
        value = numpy_helper.to_array(new)
        axis = int(attr(dq, "axis", 1)) % max(value.ndim, 1)
        per_channel = inits[dq.input[1]].dims and math.prod(inits[dq.input[1]].dims) > 1
        if codes_t.data_type == TensorProto.INT32:
            scale = _bias_scale(reader, producer, inits, value.size)
            if scale is None:
                continue
            codes = np.round(value / scale).astype(np.int32)
            zero = np.zeros_like(codes)
        elif codes_t.data_type in (TensorProto.INT8, TensorProto.UINT8):
            old_zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else None
            codes, scale, zero = _quantize(value, axis if per_channel else None, codes_t.data_type,
                                           old_zero is None or not np.any(old_zero))
        else:
            continue
        base = f"{reader.input[port]}_q"
        names = [base, f"{base}_scale", f"{base}_zero_point"]
        tensors = [numpy_helper.from_array(codes, names[0]),
                   numpy_helper.from_array(scale.astype(np.float32), names[1]), numpy_helper.from_array(zero, names[2])]
        model.graph.initializer.extend(tensors)
        inits.update({t.name: t for t in tensors})
        node = helper.make_node("DequantizeLinear", names, [f"{base}_dq"], name=f"{base}_dq")
        if scale.size > 1:
            node.attribute.append(helper.make_attribute("axis", axis))
        producer[node.output[0]] = node
        position = next(k for k, n in enumerate(model.graph.node) if n is reader)
        model.graph.node.insert(position, node)
        reader.input[port] = node.output[0]
        done += 1
    _drop_unread(model)
    return done


def _bias_scale(reader: NodeProto, producer: dict[str, NodeProto], inits: dict[str, TensorProto],
                size: int) -> np.ndarray | None:
    """input scale x weight scale of a Conv/Gemm whose input and weight are DequantizeLinear outputs."""
    from onnx import numpy_helper

    x_dq, w_dq = producer.get(reader.input[0]), producer.get(reader.input[1])
    if x_dq is None or w_dq is None or "DequantizeLinear" not in (x_dq.op_type, w_dq.op_type) \
            or x_dq.op_type != w_dq.op_type or x_dq.input[1] not in inits or w_dq.input[1] not in inits:
        return None
    x_scale = numpy_helper.to_array(inits[x_dq.input[1]])
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]])
    if x_scale.size != 1 or w_scale.size not in (1, size):
        return None
    return (x_scale.reshape(()) * w_scale.reshape(-1)).astype(np.float32) * np.ones(size, np.float32)


def _quantize(value: np.ndarray, axis: int | None, dtype: int, symmetric: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale, zero point) of ``value`` per channel along ``axis`` (or per tensor), min-max."""
    flat = value.reshape(1, -1) if axis is None else np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    low, high = np.minimum(flat.min(axis=1), 0.0), np.maximum(flat.max(axis=1), 0.0)
    np_type = np.int8 if dtype == TensorProto.INT8 else np.uint8
    qmin, qmax = (-127, 127) if np_type == np.int8 and symmetric else (np.iinfo(np_type).min, np.iinfo(np_type).max)
    if symmetric:
        scale = np.maximum(np.maximum(-low, high) / qmax, 1e-12)
        zero = np.zeros_like(scale)
    else:
        scale = np.maximum((high - low) / (qmax - qmin), 1e-12)
        zero = np.clip(np.round(qmin - low / scale), qmin, qmax)
    shape = [1] * value.ndim
    if axis is not None:
        shape[axis] = -1
    codes = np.clip(np.round(value / scale.reshape(shape)) + zero.reshape(shape), qmin, qmax).astype(np_type)
    squeeze = (lambda a: a.reshape(())) if axis is None else (lambda a: a)
    return codes, squeeze(scale), squeeze(zero.astype(np_type))


def _drop_unread(model: onnx.ModelProto) -> None:
    """Remove DequantizeLinear nodes nobody reads any more, then initializers nobody reads."""
    g = model.graph
    while True:
        read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
        dead = [k for k, n in enumerate(g.node) if n.op_type == "DequantizeLinear" and n.output[0] not in read]
        if not dead:
            break
        for k in reversed(dead):
            del g.node[k]
    read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
