"""com.microsoft ``MatMulNBits``: ``Y = A @ dequantize(B)`` with B stored transposed and quantized blockwise along
K (onnxruntime's ContribOperators schema): ``B`` uint8 [N, k_blocks, block_size * bits / 8] (packed codes,
low bits first), ``scales`` [N * k_blocks] (any shape of that size), optional ``zero_points`` (uint8 packed
[N * ceil(k_blocks * bits / 8)] or float [N * k_blocks]; absent: 2^(bits-1)), ``g_idx``, ``bias`` [N]; attributes
K, N, bits, block_size.

* Output features (N): packed rows, their scales, zero points and bias are cut; ``N`` follows.
* Input features (K): only whole quantization blocks go -- each block of ``block_size`` input channels is one unit
  of the group -- so no code is re-packed into another block and nothing is re-quantized; K not a multiple of
  block_size, or a ``g_idx`` (act-order) that scatters channels over blocks, blocks the group with the reason.
Criteria see the weight dequantized ([N, K] floats). Never re-quantized: the kept codes are the original ones.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import (
    AnalysisContext,
    Handler,
    RankOf,
    RewriteContext,
    Shapes,
    attr,
    register,
    same_rank,
)
from onnxprune.ops.common import tie_heads

__all__ = ["MatMulNBits", "dequantize_nbits"]


def _port(node: NodeProto, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes packed ``8 // bits`` to a byte (low bits first) along the last axis, the first ``count`` of them."""
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    pad = (-codes.shape[-1]) % per
    codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1) if pad else codes
    grouped = codes.reshape(*codes.shape[:-1], -1, per).astype(np.uint8)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def _layout(node: NodeProto) -> tuple[int, int, int, int]:
    """(K, N, bits, block_size)."""
    return (int(attr(node, "K", 0)), int(attr(node, "N", 0)), int(attr(node, "bits", 4)),
            int(attr(node, "block_size", 32)))


def dequantize_nbits(node: NodeProto, graph: Graph) -> np.ndarray | None:
    """The float weight [N, K] a MatMulNBits node multiplies by (``None`` when its inputs are not constants)."""
    k, n, bits, block = _layout(node)
    b, scales = graph.const(node.input[1]), graph.const(node.input[2])
    zero_name = _port(node, 3)
    zeros = graph.const(zero_name) if zero_name else None
    if b is None or scales is None or (zero_name and zeros is None):
        return None
    blocks = -(-k // block)
    codes = _unpack(b.reshape(n, blocks, -1), bits, block).astype(np.float32)  # [N, blocks, block]
    if zeros is None:
        zero = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    elif np.issubdtype(zeros.dtype, np.floating):
        zero = zeros.reshape(n, blocks).astype(np.float32)
    else:
        zero = _unpack(zeros.reshape(n, -1), bits, blocks).astype(np.float32)
    w = (codes - zero[..., None]) * scales.reshape(n, blocks)[..., None].astype(np.float32)
    return w.reshape(n, -1)[:, :k]


@register
class MatMulNBits(Handler):
    op_types = ("MatMulNBits",)
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        k, n, bits, block = _layout(node)
        label = f"MatMulNBits {ctx.node_label(i)}"
        la = ctx.labeled(node.input[0])
        rank = ctx.graph.rank(node.input[0])
        consts = [name for name in node.input[1:] if name]
        if not all(ctx.graph.is_const(name) for name in consts) or bits not in (2, 4, 8) or rank is None:
            ctx.block_inputs(i, f"{label} has computed weights or an unsupported layout (bits={bits})")
            return
        w_view = _weight_view(node, ctx.graph)
        if la is not None:
            if la.axis != rank - 1:
                ctx.block(la.atoms, f"{label} reads channels on its row axis")
            elif k % block or _port(node, 4):
                why = "act-order g_idx" if _port(node, 4) else f"K={k} is not a multiple of block_size={block}"
                ctx.block(la.atoms, f"{label} cuts K only in whole blocks: {why}")
            else:
                tie_heads(ctx, la.atoms, block)  # a quantization block of input channels goes whole
                ctx.weight(node.input[1], la.atoms, "in", i, view=lambda b: w_view(b).T)
        out = ctx.source(i, node.output[0], rank - 1, n)
        ctx.weight(node.input[1], out, "out", i, view=w_view)
        for name in (node.input[2], _port(node, 3), _port(node, 5)):
            if name:
                ctx.weight(name, out, "qparam", i, view=lambda a: a.reshape(n, -1))

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        kin, kout = rw.keep(node.input[0]), rw.keep(node.output[0])
        if kin is None and kout is None:
            return
        k, n, bits, block = _layout(node)
        blocks = k // block
        b = rw.const(node.input[1]).reshape(n, blocks, -1)
        scales = rw.const(node.input[2])
        scales_2d = scales.reshape(n, blocks)
        zero_name = _port(node, 3)
        zeros = rw.const(zero_name) if zero_name else None
        packed_zero = zeros is not None and not np.issubdtype(zeros.dtype, np.floating)
        zero_2d = None if zeros is None else (_unpack(zeros.reshape(n, -1), bits, blocks) if packed_zero
                                              else zeros.reshape(n, blocks))
        rows = kout if kout is not None else np.arange(n)
        cols = kin[::block] // block if kin is not None else np.arange(blocks)
        rw.set_input(i, 1, np.ascontiguousarray(b[rows][:, cols]))
        new_scales = scales_2d[rows][:, cols]
        rw.set_input(i, 2, new_scales if scales.ndim == 2 else new_scales.reshape(-1))
        if zero_2d is not None and zeros is not None:
            new_zero = zero_2d[rows][:, cols]
            new_zero = _pack(new_zero, bits) if packed_zero else new_zero
            rw.set_input(i, 3, new_zero if zeros.ndim == 2 else new_zero.reshape(-1))
        if kout is not None and _port(node, 5):
            rw.set_input(i, 5, rw.const(node.input[5])[kout])
        rw.set_attr(i, "N", len(rows))
        rw.set_attr(i, "K", len(cols) * block)

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        out = shapes.get(node.output[0])
        return int(np.prod(out)) * _layout(node)[0] if out is not None else 0

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """A @ zeros[K, N]: the output's shape and float type."""
        k, n, _, _ = _layout(node)
        out = node.output[0]
        weight = helper.make_node("ConstantOfShape", [f"{out}__proxy_shape"], [f"{out}__proxy_w"])
        shape = helper.make_node("Constant", [], [f"{out}__proxy_shape"],
                                 value=helper.make_tensor("s", 7, [2], [k, n]))
        if opset >= 15:  # the weight in A's type (float16 models)
            typed = helper.make_node("CastLike", [f"{out}__proxy_w", node.input[0]], [f"{out}__proxy_wt"])
            return [shape, weight, typed, helper.make_node("MatMul", [node.input[0], typed.output[0]], [out])]
        return [shape, weight, helper.make_node("MatMul", [node.input[0], f"{out}__proxy_w"], [out])]


def _weight_view(node: NodeProto, graph: Graph):
    """B's codes -> the dequantized weight [N, K] (rows: output features)."""
    def view(_: np.ndarray) -> np.ndarray:
        w = dequantize_nbits(node, graph)
        assert w is not None
        return w
    return view
