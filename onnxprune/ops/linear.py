"""Gemm and MatMul: consumers of channels along their reduction axis, creators of hidden features."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import (
    AnalysisContext,
    BenchSpec,
    Handler,
    LinearForm,
    RankOf,
    RewriteContext,
    Shapes,
    attr,
    broadcast_rank,
    node_attrs,
    register,
    same_rank,
)
from onnxprune.ops.repeats import repeat_chain, shorten_repeat


@register
class Gemm(Handler):
    op_types = ("Gemm",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        a_name, b_name = node.input[0], node.input[1]
        c_name = node.input[2] if len(node.input) > 2 else ""
        la = ctx.labeled(a_name)
        label = f"Gemm {ctx.node_label(i)}"
        b = ctx.graph.const_shape(b_name)
        if b is None or len(b) != 2 or (c_name and not ctx.graph.is_const(c_name)) or ctx.labeled(b_name):
            ctx.block_inputs(i, f"{label} has non-constant weights")
            return
        trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        if la is not None:
            if la.axis != (0 if trans_a else 1):
                ctx.block(la.atoms, f"{label} reads channels on its row axis")
            else:
                ctx.weight(b_name, la.atoms, "in", i, axis=k_axis)
        out = ctx.source(i, node.output[0], 1, int(b[n_axis]))
        ctx.weight(b_name, out, "out", i, axis=n_axis)
        if c_name:
            c_shape = ctx.graph.shape(c_name)
            if c_shape and c_shape[-1] == len(out) and len(out) > 1:
                ctx.weight(c_name, out, "bias", i, axis=len(c_shape) - 1)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        kin, kout = rw.keep(node.input[0]), rw.keep(node.output[0])
        if kin is None and kout is None:
            return
        trans_b = int(attr(node, "transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        b = rw.const(node.input[1])
        if kin is not None:
            b = np.take(b, kin, axis=k_axis)
        if kout is not None:
            b = np.take(b, kout, axis=n_axis)
        rw.set_input(i, 1, b)
        if kout is not None and len(node.input) > 2 and node.input[2]:
            c = rw.const(node.input[2])
            if c.ndim and c.shape[-1] > 1:
                rw.set_input(i, 2, np.take(c, kout, axis=c.ndim - 1))



    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        return _matmul_macs(shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]),
                            bool(attr(node, "transA", 0)))

    def linear(self, node: NodeProto, graph: Graph) -> LinearForm | None:
        return GemmForm(node)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)  # A and Y are both 2-D

    def bench(self, node: NodeProto, graph: Graph, x: list[int], y: list[int], x_full: Sequence[int]
              ) -> BenchSpec | None:
        k_dim = x[0] if attr(node, "transA", 0) else x[1]
        w = [y[1], k_dim] if attr(node, "transB", 0) else [k_dim, y[1]]
        return BenchSpec(w, node_attrs(node), bias_port=2)


@register
class MatMul(Handler):
    op_types = ("MatMul",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        a_name, b_name = node.input
        la, lb = ctx.labeled(a_name), ctx.labeled(b_name)
        label = f"MatMul {ctx.node_label(i)}"
        b = ctx.graph.const_shape(b_name)
        a_rank = ctx.graph.rank(a_name)
        if b is None or len(b) != 2 or lb is not None or a_rank is None:
            _batched(i, node, ctx, label)
            return
        if la is not None:
            if la.axis == a_rank - 1:
                ctx.weight(b_name, la.atoms, "in", i, axis=0)
            elif a_rank > 2 and la.axis < a_rank - 2:
                ctx.set(node.output[0], la.axis, la.atoms)  # channels on a batch axis pass through
                return
            else:
                ctx.block(la.atoms, f"{label} reads channels on its row axis")
        out = ctx.source(i, node.output[0], max(a_rank, 2) - 1, int(b[1]))
        ctx.weight(b_name, out, "out", i, axis=1)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        kin, kout = rw.keep(node.input[0]), rw.keep(node.output[0])
        la = rw.labeled(node.input[0])
        b_name = node.input[1]
        if la is not None and la.axis < (rw.graph.rank(node.input[0]) or 0) - 2:
            if not rw.graph.is_const(b_name):
                _shorten_repeats(i, node, rw)
            return  # batch-axis channels: the weight is untouched
        if not rw.graph.is_const(b_name):
            _shorten_repeats(i, node, rw)  # two computed operands: nothing stored to cut
            return
        if kin is None and kout is None:
            return
        b = rw.const(b_name)
        if kin is not None:
            b = b[kin]
        if kout is not None:
            b = b[:, kout]
        rw.set_input(i, 1, b)

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        return _matmul_macs(shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]), False)

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        w = graph.const_shape(node.input[1])
        return super().mac_scaling(node, graph) if w is not None and len(w) == 2 else (node.output[0],)

    def linear(self, node: NodeProto, graph: Graph) -> LinearForm | None:
        w, rank = graph.const_shape(node.input[1]), graph.rank(node.input[0])
        if w is None or len(w) != 2 or rank is None or rank < 2:
            return None
        return MatMulForm(rank, _bias_add(node, graph, int(w[1])))

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return broadcast_rank(node, rank)  # the larger operand rank (batch dimensions broadcast)

    def bench(self, node: NodeProto, graph: Graph, x: list[int], y: list[int], x_full: Sequence[int]
              ) -> BenchSpec | None:
        w = graph.const_shape(node.input[1])
        if w is None or len(w) != 2:
            return None  # only MatMul with a 2-D constant weight is measured
        return BenchSpec([x[-1], y[-1]], node_attrs(node))


def _batched(i: int, node: NodeProto, ctx: AnalysisContext, label: str) -> None:
    """A product of two computed tensors (attention's Q K^T and P V): channels on the batch axes (heads), on
    A's rows or on B's columns pass to the output, tied where both operands carry them; channels on the
    reduction axis are blocked. Heads met by an operand that broadcasts or repeats one slice along their axis
    (multi-query attention's shared K/V head, :mod:`onnxprune.ops.repeats`) start a source here: the output's
    heads are masked with them, as a softmax in between would not keep a masked head at zero."""
    names = list(node.input)
    ranks = [ctx.graph.rank(n) for n in names]
    out_rank = ctx.graph.rank(node.output[0])
    if any(r is None for r in ranks) or out_rank is None or min(r or 0 for r in ranks) < 2:
        ctx.block_inputs(i, f"{label} multiplies two computed tensors of unknown or 1-D shape")
        return
    labs = [ctx.labeled(n) for n in names]
    axes: list[int | None] = [None, None]
    for port, (lab, rank) in enumerate(zip(labs, ranks)):
        if lab is None:
            continue
        assert rank is not None
        reduced = rank - 1 if port == 0 else rank - 2
        if lab.axis == reduced:
            if _shared_heads(ctx, names, ranks, labs, 1 - port, out_rank):
                ctx.block(lab.atoms, f"{label} sums over the channels of a head shared by every query head")
                labs[port] = None
                continue
            ctx.block_inputs(i, f"{label} sums over the channels of two computed tensors")
            return
        axes[port] = out_rank - 1 if port == 1 and lab.axis == rank - 1 else lab.axis + out_rank - rank
    present = [port for port in (0, 1) if labs[port] is not None]
    if len(present) == 2 and axes[0] != axes[1]:
        batch = [p for p in present if (axes[p] or 0) < out_rank - 2]
        if len(batch) == 1 and _shared_heads(ctx, names, ranks, labs, batch[0], out_rank):
            other = labs[1 - batch[0]]
            assert other is not None
            ctx.block(other.atoms, f"{label}: the channels of a head shared by every query head stay")
            labs[1 - batch[0]] = None
            present = batch
        else:
            ctx.block_inputs(i, f"{label} multiplies channels lying on different axes")
            return
    if not present:
        return
    first = labs[present[0]]
    assert first is not None
    axis = axes[present[0]]
    assert axis is not None
    if len(present) == 2:
        second = labs[present[1]]
        assert second is not None
        if first.size != second.size:
            ctx.block_inputs(i, f"{label} multiplies channels lying on different axes")
            return
        ctx.tie(first.atoms, second.atoms)
        ctx.set(node.output[0], axis, first.atoms)
        return
    if axis < out_rank - 2:  # the other operand must broadcast or repeat along the batch axis
        k = axis - (out_rank - (ranks[1 - present[0]] or 0))
        shape = ctx.graph.shape(names[1 - present[0]])
        repeated = k >= 0 and repeat_chain(ctx.graph, names[1 - present[0]], k) is not None
        if k >= 0 and not repeated and (shape is None or shape[k] != 1):
            ctx.block_inputs(i, f"{label} pairs the channels with a fixed operand ('{names[1 - present[0]]}')")
            return
        ctx.tie(ctx.source(i, node.output[0], axis, first.size), first.atoms)
        ctx.tag(first.atoms, "head")  # channels on a batch axis of a product of two computed tensors: heads
        return
    ctx.set(node.output[0], axis, first.atoms)


def _shared_heads(ctx: AnalysisContext, names: list[str], ranks: list, labs: list, port: int, out_rank: int) -> bool:
    """Whether operand ``port`` carries heads on a batch axis that the other operand repeats from one slice
    (multi-query attention)."""
    lab, rank = labs[port], ranks[port]
    if lab is None or rank is None:
        return False
    out_axis = lab.axis + out_rank - rank
    k = out_axis - (out_rank - (ranks[1 - port] or 0))
    return out_axis < out_rank - 2 and k >= 0 and repeat_chain(ctx.graph, names[1 - port], k) is not None


def _shorten_repeats(i: int, node: NodeProto, rw: RewriteContext) -> None:
    """Heads cut on a batch axis of a product of computed tensors: the operand that repeats one slice along it
    repeats it for the kept heads only."""
    keep, out_rank = rw.keep(node.output[0]), rw.graph.rank(node.output[0])
    if keep is None or out_rank is None:
        return
    axis = rw.label(node.output[0]).axis
    for name in node.input:
        lab, rank = rw.labeled(name), rw.graph.rank(name)
        k = axis - (out_rank - (rank or 0))
        if rank is None or k < 0 or axis >= out_rank - 2 or (lab is not None and lab.axis == k):
            continue
        shorten_repeat(rw, name, k, len(keep))


def _bias_add(node: NodeProto, graph: Graph, width: int) -> tuple[str, int] | None:
    """(output, port) of the Add that adds a constant [width] bias to the MatMul's output, its only reader."""
    readers = graph.consumer_nodes(node.output[0])
    if len(readers) != 1 or node.output[0] in graph.outputs:
        return None
    j, port = readers[0]
    add = graph.nodes[j]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    shape = graph.const_shape(add.input[1 - port])
    if shape is None or not shape or shape[-1] != width or any(d != 1 for d in shape[:-1]):
        return None
    return add.output[0], 1 - port


def _matmul_macs(a: Sequence[int] | None, b: Sequence[int] | None, out: Sequence[int] | None, trans_a: bool) -> int:
    if not a or out is None or b is None:
        return 0
    k = a[-2] if trans_a else a[-1]
    return int(np.prod(out)) * int(k)


def _flat_rows(x: np.ndarray, sample: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)[sample]


class GemmForm(LinearForm):
    """Gemm (without transA) as y = alpha * x B + beta * C."""

    def __init__(self, node: NodeProto) -> None:
        self.alpha = float(attr(node, "alpha", 1.0))
        self.beta = float(attr(node, "beta", 1.0))
        self.trans_b = bool(attr(node, "transB", 0))
        self.has_bias = len(node.input) > 2 and bool(node.input[2])
        self.refit = not int(attr(node, "transA", 0))

    def bias_shift(self, weight: np.ndarray, mean: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
        b = weight.T if self.trans_b else weight  # [K, N]
        delta = mean[removed] @ b[removed]
        return delta * self.alpha / self.beta  # Gemm scales C by beta

    def rows(self, x: np.ndarray, sample: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        return _flat_rows(x, sample)

    def store(self, weights: np.ndarray, bias: np.ndarray | None, inputs: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        weights = weights / self.alpha
        if not self.trans_b:
            weights = weights.T
        if bias is not None:
            bias = bias / (self.beta if self.has_bias else 1.0)
        return weights, bias

    def matrix(self, weight: np.ndarray) -> np.ndarray | None:
        if weight.ndim != 2:
            return None
        return (weight if self.trans_b else weight.T) * self.alpha

    def columns(self, shape: Sequence[int]) -> int:
        return int(shape[1] if self.trans_b else shape[0])


class MatMulForm(LinearForm):
    """MatMul by a constant [K, N] weight: no bias to absorb offsets; refitted per sample on 2-D inputs and per
    token on [batch, tokens.., K] inputs (a transformer's projections)."""

    bias_port = None
    refit = True

    def __init__(self, rank: int, bias_add: tuple[str, int] | None = None) -> None:
        self.tokens = rank > 2
        self.bias_add = bias_add

    def bias_shift(self, weight: np.ndarray, mean: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
        return mean[removed] @ weight[removed] if self.bias_add is not None else None

    def rows(self, x: np.ndarray, sample: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.tokens:
            return x.reshape(x.shape[0], -1, x.shape[-1])[sample, where[0]]
        return _flat_rows(x, sample)

    def store(self, weights: np.ndarray, bias: np.ndarray | None, inputs: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        return weights.T, None  # B is [inputs, outputs]

    def matrix(self, weight: np.ndarray) -> np.ndarray | None:
        return weight.T if weight.ndim == 2 else None

    def columns(self, shape: Sequence[int]) -> int:
        return int(shape[0])
