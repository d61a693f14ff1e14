"""Quantized operators (QOperator and dynamic graphs): each is its float op on some of its ports, plus
quantization parameters that follow its output channels.

* ``QLinearConv`` = Conv(x, w, B) on ports (0, 3, 8); ``ConvInteger`` = Conv(x, w) on (0, 1): the integer codes
  are cut like a float weight, per-channel weight scales and zero points with the filters, the int32 bias too;
* ``QLinearMatMul`` (0, 3), ``MatMulInteger`` (0, 1), com.microsoft ``DynamicQuantizeMatMul`` and
  ``MatMulIntegerToFloat`` (0, 1) = MatMul; com.microsoft ``QGemm`` = Gemm(A, B, C) on (0, 3, 6): per-column
  scales, zero points and biases follow the output features;
* com.microsoft ``QLinearAdd``/``QLinearMul`` = Add/Mul on (0, 3), ``QLinearConcat`` = Concat of its
  (X, scale, zero point) triples, ``QLinearGlobalAveragePool``/``QLinearAveragePool`` (channels first),
  ``QLinearSigmoid``/``QLinearLeakyRelu`` = unary: the activation scales are per tensor and stay.

Criteria see the weights dequantized (codes minus zero point, times the scale where the op holds it). The output
scale and zero point are per tensor by the ops' schemas; the code of 0.0 (what the mask oracle writes into a
removed channel) is the output zero point. Other quantized ops (QLinearSoftmax, QLinearReduceMean, ...) block
the channels they touch as unsupported ops, naming the node.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import (
    AnalysisContext,
    Handler,
    RankOf,
    RewriteContext,
    Shapes,
    handler_for,
    register,
)

__all__ = ["QuantizedOp"]


def _view(node: NodeProto, ports: Sequence[int], op_type: str, drop: Sequence[str] = ()) -> NodeProto:
    """The float op a quantized node computes, on the node's own tensors (``ports``, "" where absent)."""
    view = NodeProto()
    view.CopyFrom(node)
    view.op_type, view.domain = op_type, ""
    names = [node.input[p] if p < len(node.input) else "" for p in ports]
    while names and not names[-1]:
        names.pop()
    del view.input[:]
    view.input.extend(names)
    kept = [a for a in view.attribute if a.name not in drop]
    del view.attribute[:]
    view.attribute.extend(kept)
    return view


class _Ported:
    """A rewrite context for the float view: its ports are mapped back onto the quantized node's."""

    def __init__(self, rw: RewriteContext, ports: Sequence[int]) -> None:
        self._rw, self._ports = rw, ports

    def __getattr__(self, key: str) -> Any:
        return getattr(self._rw, key)

    def set_input(self, node: int, port: int, value: np.ndarray) -> None:
        self._rw.set_input(node, self._ports[port], value)


class _Dequantized:
    """An analysis context for the float view: the weight's codes are shown to criteria dequantized."""

    def __init__(self, ctx: AnalysisContext, codes: str, dequantize: Callable[[np.ndarray], np.ndarray]) -> None:
        self._ctx, self._codes, self._dequantize = ctx, codes, dequantize

    def __getattr__(self, key: str) -> Any:
        return getattr(self._ctx, key)

    def weight(self, name: str, atoms: np.ndarray, role: str, node: int, axis: int = 0,
               view: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if name != self._codes:
            self._ctx.weight(name, atoms, role, node, axis, view)
            return
        if view is None:
            def view(a: np.ndarray, _axis: int = axis) -> np.ndarray:
                return np.moveaxis(a, _axis, 0).reshape(a.shape[_axis], -1)
        inner = view
        self._ctx.weight(name, atoms, role, node, axis, lambda a: inner(self._dequantize(a)))


class QuantizedOp(Handler):
    """A quantized op seen as ``float_op`` on ``ports``; ``params``: (scale or zero point port, weight axis it
    runs along) of per-channel parameters that follow the output channels; ``zero``: the output zero point's
    port (-1: the op writes 0.0 as 0); ``weight``: (codes port, scale port, zero point port, axis of the
    per-channel parameters) for the dequantized view criteria read."""

    float_op: ClassVar[str] = ""
    ports: ClassVar[tuple[int, ...]] = ()
    params: ClassVar[tuple[int, ...]] = ()
    zero: ClassVar[int] = -1
    weight: ClassVar[tuple[int, int, int, int] | None] = None
    drop: ClassVar[tuple[str, ...]] = ()

    def ports_of(self, node: NodeProto) -> tuple[int, ...]:
        return self.ports

    def weight_of(self, node: NodeProto) -> tuple[int, int, int, int] | None:
        return self.weight

    def view(self, node: NodeProto) -> NodeProto:
        return _view(node, self.ports_of(node), self.float_op, self.drop)

    def base(self) -> Handler:
        handler = handler_for(helper.make_node(self.float_op, [], []))
        assert handler is not None, self.float_op
        return handler

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        view = self.view(node)
        inner, weight = ctx, self.weight_of(node)
        if weight is not None and ctx.graph.is_const(node.input[weight[0]]):
            dequantize = _dequantizer(node, ctx.graph, weight)
            inner = cast(AnalysisContext, _Dequantized(ctx, node.input[weight[0]], dequantize))
        self.base().propagate(i, view, inner)
        out = ctx.labeled(node.output[0])
        if out is None:
            return
        for port in self.params:
            name = node.input[port] if port < len(node.input) else ""
            shape = ctx.graph.const_shape(name) if name else None
            if shape is not None and int(np.prod(shape)) == out.size and out.size > 1:
                ctx.weight(name, out.atoms, "qparam", i)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        self.base().apply(i, self.view(node), cast(RewriteContext, _Ported(rw, self.ports_of(node))))
        keep = rw.keep(node.output[0])
        if keep is None:
            return
        for port in self.params:
            name = node.input[port] if port < len(node.input) else ""
            if name and rw.graph.is_const(name):
                value = rw.const(name)
                if value.size == rw.label(node.output[0]).size and value.size > 1:
                    rw.set_input(i, port, value.reshape(-1)[keep].reshape(-1 if value.ndim else ()))

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        return self.base().macs(self.view(node), shapes)

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        return self.base().mac_scaling(self.view(node), graph)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return self.base().output_rank(self.view(node), rank)

    def zero_point(self, node: NodeProto, output: int) -> str | None:
        if self.zero < 0 or output:
            return ""
        return node.input[self.zero] if self.zero < len(node.input) else ""


@register
class QLinearConv(QuantizedOp):
    op_types = ("QLinearConv",)
    float_op, ports, params, zero, weight = "Conv", (0, 3, 8), (4, 5), 7, (3, 4, 5, 0)


@register
class ConvInteger(QuantizedOp):
    op_types = ("ConvInteger",)
    float_op, ports, params, weight = "Conv", (0, 1), (3,), (1, -1, 3, 0)


@register
class QLinearMatMul(QuantizedOp):
    op_types = ("QLinearMatMul",)
    float_op, ports, params, zero, weight = "MatMul", (0, 3), (4, 5), 7, (3, 4, 5, -1)


@register
class MatMulInteger(QuantizedOp):
    op_types = ("MatMulInteger",)
    float_op, ports, params, weight = "MatMul", (0, 1), (3,), (1, -1, 3, -1)


@register
class DynamicQuantizeMatMul(QuantizedOp):
    op_types = ("DynamicQuantizeMatMul",)
    domain = "com.microsoft"
    float_op, ports, params, weight = "MatMul", (0, 1), (2, 3, 4), (1, 2, 3, -1)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        return _float_matmul(node, node.input[0], node.input[1])


@register
class MatMulIntegerToFloat(QuantizedOp):
    op_types = ("MatMulIntegerToFloat",)
    domain = "com.microsoft"
    float_op, ports, params, weight = "MatMul", (0, 1), (3, 5, 6), (1, 3, 5, -1)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        return _float_matmul(node, node.input[0], node.input[1])


def _dequantizer(node: NodeProto, graph: Graph, weight: tuple[int, int, int, int]
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """codes -> (codes - zero point) * scale, per tensor or along the weight's per-channel axis."""
    _, scale_port, zero_port, axis = weight

    def param(port: int) -> np.ndarray | None:
        name = node.input[port] if 0 <= port < len(node.input) else ""
        return graph.const(name) if name else None

    scale, zero = param(scale_port), param(zero_port)

    def along(value: np.ndarray, ndim: int) -> np.ndarray:
        if value.size == 1:
            return value.reshape(())
        shape = [1] * ndim
        shape[axis % ndim] = value.size
        return value.reshape(shape)

    def dequantize(codes: np.ndarray) -> np.ndarray:
        values = codes.astype(np.float64)
        if zero is not None:
            values = values - along(zero, codes.ndim)
        return values if scale is None else values * along(scale, codes.ndim)
    return dequantize


def _float_matmul(node: NodeProto, a: str, b: str) -> list[NodeProto]:
    out = node.output[0]
    return [helper.make_node("Cast", [a], [f"{out}__proxy_a"], to=1),
            helper.make_node("Cast", [b], [f"{out}__proxy_b"], to=1),
            helper.make_node("MatMul", [f"{out}__proxy_a", f"{out}__proxy_b"], [out])]


def _requantized(node: NodeProto, result: NodeProto, zero: str, opset: int) -> list[NodeProto]:
    """``result`` (computing ``node``'s output in float, renamed) with the type of the zero point ``zero``:
    Where(bool(result), zero, zero) has the result's shape and the zero point's type at any opset."""
    out = node.output[0]
    result.output[0] = f"{out}__proxy_float"
    cond = helper.make_node("Cast", [result.output[0]], [f"{out}__proxy_cond"], to=9)  # BOOL
    return [result, cond, helper.make_node("Where", [cond.output[0], zero, zero], [out])]


@register
class QGemm(QuantizedOp):
    op_types = ("QGemm",)
    domain = "com.microsoft"
    float_op, ports, params, zero = "Gemm", (0, 3, 6), (4, 5), 8

    def weight_of(self, node: NodeProto) -> tuple[int, int, int, int] | None:
        return (3, 4, 5, 0 if _trans_b(node) else 1)  # per output feature: B's N axis

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        out = node.output[0]
        nodes = [helper.make_node("Cast", [node.input[0]], [f"{out}__proxy_a"], to=1),
                 helper.make_node("Cast", [node.input[3]], [f"{out}__proxy_b"], to=1)]
        gemm = helper.make_node("Gemm", [f"{out}__proxy_a", f"{out}__proxy_b"], [out],
                                transA=int(_attr(node, "transA", 0)), transB=int(_attr(node, "transB", 0)))
        if len(node.input) > 8 and node.input[8]:
            return nodes + _requantized(node, gemm, node.input[8], opset)
        return nodes + [gemm]


def _attr(node: NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _trans_b(node: NodeProto) -> bool:
    return bool(_attr(node, "transB", 0))


class _Elementwise(QuantizedOp):
    domain = "com.microsoft"

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        view = self.view(node)
        return [helper.make_node(view.op_type, list(view.input), [node.output[0]],
                                 **{a.name: helper.get_attribute_value(a) for a in view.attribute})]


@register
class QLinearAdd(_Elementwise):
    op_types = ("QLinearAdd",)
    float_op, ports, zero = "Add", (0, 3), 7


@register
class QLinearMul(_Elementwise):
    op_types = ("QLinearMul",)
    float_op, ports, zero = "Mul", (0, 3), 7


@register
class QLinearConcat(_Elementwise):
    op_types = ("QLinearConcat",)
    float_op, zero = "Concat", 1

    def ports_of(self, node: NodeProto) -> tuple[int, ...]:
        return tuple(range(2, len(node.input), 3))


@register
class QLinearUnary(_Elementwise):
    op_types = ("QLinearSigmoid", "QLinearLeakyRelu")
    float_op, ports, zero, drop = "Identity", (0,), 4, ("alpha",)


class _Pool(_Elementwise):
    zero, ports, drop = 4, (0,), ("channels_last",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        if _attr(node, "channels_last", 0):
            ctx.block_inputs(i, f"{node.op_type} {ctx.node_label(i)} pools channels-last data")
            return
        super().propagate(i, node, ctx)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        out = node.output[0]
        view = self.view(node)
        pool = helper.make_node(view.op_type, [f"{out}__proxy_x"], [out],
                                **{a.name: helper.get_attribute_value(a) for a in view.attribute})
        cast_in = helper.make_node("Cast", [node.input[0]], [f"{out}__proxy_x"], to=1)
        return [cast_in] + _requantized(node, pool, node.input[4], opset)


@register
class QLinearGlobalAveragePool(_Pool):
    op_types = ("QLinearGlobalAveragePool",)
    float_op = "GlobalAveragePool"


@register
class QLinearAveragePool(_Pool):
    op_types = ("QLinearAveragePool",)
    float_op = "AveragePool"
