"""Gemm and MatMul: consumers of channels along their reduction axis, creators of hidden features."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.ops import applies, attr, propagates


@propagates("Gemm")
def gemm(i: int, node: NodeProto, ctx) -> None:
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


@applies("Gemm")
def gemm_apply(i: int, node: NodeProto, rw) -> None:
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


@propagates("MatMul")
def matmul(i: int, node: NodeProto, ctx) -> None:
    a_name, b_name = node.input
    la, lb = ctx.labeled(a_name), ctx.labeled(b_name)
    label = f"MatMul {ctx.node_label(i)}"
    b = ctx.graph.const_shape(b_name)
    a_rank = ctx.graph.rank(a_name)
    if b is None or len(b) != 2 or lb is not None or a_rank is None:
        ctx.block_inputs(i, f"{label} multiplies two computed tensors")
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


@applies("MatMul")
def matmul_apply(i: int, node: NodeProto, rw) -> None:
    kin, kout = rw.keep(node.input[0]), rw.keep(node.output[0])
    la = rw.labeled(node.input[0])
    b_name = node.input[1]
    if la is not None and la.axis < (rw.graph.rank(node.input[0]) or 0) - 2:
        return  # batch-axis channels: the weight is untouched
    if kin is None and kout is None:
        return
    b = rw.const(b_name)
    if kin is not None:
        b = b[kin]
    if kout is not None:
        b = b[:, kout]
    rw.set_input(i, 1, b)
