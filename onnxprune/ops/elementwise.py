"""Elementwise ops: unary ones pass channels through; n-ary ones broadcast, tie labeled operands position by
position, slice per-channel constants and let scalars (or size-1 axes) pass."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.handlers import (
    AnalysisContext,
    BenchLink,
    Handler,
    RankOf,
    RewriteContext,
    broadcast_rank,
    register,
    same_rank,
)

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Mish", "ThresholdedRelu", "Shrink", "Identity", "Dropout", "Cast", "CastLike",
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "IsNaN", "IsInf", "Clip",
    "Swish",
)#: Unary ops onnxruntime fuses or runs cheaply: the --round-to micro-benchmark chains a group's nodes through them.
BENCH_PASS = ("Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Elu", "Selu", "Identity", "Dropout")
NARY = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)


@register
class Unary(Handler):
    op_types = UNARY

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Ops whose first input is the only one carrying channels (Clip's min/max, CastLike's target are scalars)."""
        lx = ctx.labeled(node.input[0])
        for extra in node.input[1:]:
            other = ctx.labeled(extra)
            if other is not None:
                ctx.block(other.atoms, f"{node.op_type} {ctx.node_label(i)} takes channels in a scalar operand")
        if lx is None:
            return
        if node.op_type == "Clip":
            for name in node.input[1:]:
                bound = ctx.graph.const(name) if name else None
                if name and (bound is None or bound.size != 1):
                    ctx.block(lx.atoms, f"Clip {ctx.node_label(i)} has non-scalar bounds")
                    return
        ctx.set(node.output[0], lx.axis, lx.atoms)
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            ctx.set(node.output[1], lx.axis, lx.atoms)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def foldable(self, node: NodeProto) -> bool:
        return node.op_type in ("Identity", "Cast")

    def bench_link(self, node: NodeProto) -> BenchLink | None:
        return "pass" if node.op_type in BENCH_PASS else None


def _operand_axis(out_rank: int, in_rank: int, axis: int) -> int:
    return axis - (out_rank - in_rank)


@register
class Nary(Handler):
    op_types = NARY

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        labeled = [(p, ctx.label(n)) for p, n in enumerate(node.input) if ctx.labeled(n) is not None]
        if not labeled:
            return
        label = f"{node.op_type} {ctx.node_label(i)}"
        maybe_ranks = [ctx.graph.rank(n) if n else 0 for n in node.input]
        if any(r is None for r in maybe_ranks):
            ctx.block_inputs(i, f"{label}: operand ranks unknown")
            return
        ranks = [int(r or 0) for r in maybe_ranks]
        out_rank = ctx.graph.rank(node.output[0])
        if out_rank is None:
            out_rank = max(ranks)
        axes = {lab.axis + out_rank - ranks[p] for p, lab in labeled}
        if len(axes) != 1:
            ctx.block_inputs(i, f"{label} combines channels lying on different axes")
            return
        axis = axes.pop()
        size = max(lab.size for _, lab in labeled)
        broadcast = [lab for _, lab in labeled if lab.size != size]
        if broadcast:
            ctx.block_inputs(i, f"{label} broadcasts a channel tensor against {size} channels")
            return
        first = labeled[0][1]
        for _, lab in labeled[1:]:
            ctx.tie(first.atoms, lab.atoms)
        for p, name in enumerate(node.input):
            if not name or ctx.labeled(name) is not None:
                continue
            k = _operand_axis(out_rank, ranks[p], axis)
            shape = ctx.graph.shape(name)
            dim = shape[k] if shape is not None and 0 <= k < len(shape) else (1 if k < 0 else None)
            if dim == 1:
                continue
            if dim == size and ctx.graph.is_const(name):
                ctx.weight(name, first.atoms, "const", i, axis=k)
                continue
            reason = "a fixed operand" if dim == size else "an operand of unknown shape"
            ctx.block(first.atoms, f"{label} combines the channels with {reason} ('{name}')")
            return
        ctx.set(node.output[0], axis, first.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        y = node.output[0]
        keep = rw.keep(y)
        if keep is None:
            return
        out_rank = rw.graph.rank(y) or max(rw.graph.rank(n) or 0 for n in node.input if n)
        axis = rw.label(y).axis
        for p, name in enumerate(node.input):
            if not name or rw.labeled(name) is not None or not rw.graph.is_const(name):
                continue
            value = rw.const(name)
            k = _operand_axis(out_rank, value.ndim, axis)
            if 0 <= k < value.ndim and value.shape[k] > 1:
                rw.set_input(i, p, np.take(value, keep, axis=k))

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank) if node.op_type == "PRelu" else broadcast_rank(node, rank)

    def bench_link(self, node: NodeProto) -> BenchLink | None:
        if node.op_type == "PRelu":
            return "pass"
        return "join" if node.op_type in ("Add", "Sum", "Mul", "Max", "Min") else None


