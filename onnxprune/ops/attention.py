"""ai.onnx ``Attention`` and ``RotaryEmbedding`` (opset 23). Attention: scaled dot-product attention on projected
Q, K and V, 3-D (``[batch, tokens, heads * head_size]`` with ``q_num_heads`` / ``kv_num_heads``) or 4-D
(``[batch, heads, tokens, head_size]``, as the dynamo exporter writes ``scaled_dot_product_attention`` at opset 23).

Heads are the units. With grouped-query attention (``q_num_heads = g * kv_num_heads``) a KV head goes with its g
query heads; the output's head h reads V's head h // g. Cutting heads lowers the head counts; the scale (from
head_size) stays. A KV cache (past/present) or the ``qk_matmul_output`` keeps the heads, with the reason: those
shapes are the model's interface. A mask with a head axis is sliced where it is constant.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.channels import Labeled
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, Shapes, attr, register, same_rank
from onnxprune.ops.common import tie_heads
from onnxprune.ops.contrib_heads import RotaryEmbedding as ContribRotaryEmbedding


@register
class Attention(Handler):
    op_types = ("Attention",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        label = f"Attention {ctx.node_label(i)}"
        inputs = list(node.input) + [""] * 7
        q, k, v, mask, past_k, past_v = inputs[:6]
        labs = [ctx.labeled(n) for n in (q, k, v)]
        if not any(labs):
            return
        rank = ctx.graph.rank(q)
        reason = None
        if past_k or past_v or any(o for o in node.output[1:]):
            reason = f"{label} has a KV cache (past/present) or returns its scores: its heads stay"
        elif any(lab is None for lab in labs) or rank not in (3, 4) or \
                any(lab is not None and lab.axis != (2 if rank == 3 else 1) for lab in labs):
            reason = f"{label} reads fixed Q/K/V or heads on another axis: its heads stay"
        if reason is None:
            heads = _heads(node, labs, rank or 0)
            if heads is None:
                reason = f"{label}: Q/K/V widths do not divide into its head counts"
            elif mask and not _mask_follows(ctx, mask, heads[0]):
                reason = f"{label} has a computed attention mask per head"
        if reason is not None:
            ctx.block_inputs(i, reason)
            return
        lq, lk, lv = labs
        assert lq is not None and lk is not None and lv is not None and heads is not None
        q_heads, kv_heads = heads
        group = q_heads // kv_heads
        if rank == 3:
            firsts = [tie_heads(ctx, lab.atoms, lab.size // n) for lab, n in ((lq, q_heads), (lk, kv_heads),
                                                                                 (lv, kv_heads))]
            out = np.repeat(lv.atoms.reshape(kv_heads, -1), group, axis=0).ravel()
        else:
            firsts, out = [lq.atoms, lk.atoms, lv.atoms], lq.atoms
        ctx.tie(firsts[1], firsts[2])
        ctx.tie(firsts[0], np.repeat(firsts[1], group))
        ctx.tag(lq.atoms, "head")
        shape = ctx.graph.const_shape(mask) if mask else None
        if shape is not None and len(shape) >= 3 and shape[-3] > 1:
            ctx.weight(mask, firsts[0], "const", i, axis=len(shape) - 3)
        ctx.set(node.output[0], 2 if rank == 3 else 1, out)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep_q, keep_k = rw.keep(node.input[0]), rw.keep(node.input[1])
        if keep_q is None or keep_k is None:
            return
        lq, lk = rw.label(node.input[0]), rw.label(node.input[1])
        rank = rw.graph.rank(node.input[0])
        heads = _heads(node, [lq, lk, rw.label(node.input[2])], rank or 0)
        if heads is None:
            return
        q_size, kv_size = (lq.size // heads[0], lk.size // heads[1]) if rank == 3 else (1, 1)
        q_kept, kv_kept = len(keep_q) // q_size, len(keep_k) // kv_size
        for name, value, given in (("q_num_heads", q_kept, attr(node, "q_num_heads")),
                                   ("kv_num_heads", kv_kept, attr(node, "kv_num_heads"))):
            if given is not None:
                rw.set_attr(i, name, value)
        mask = node.input[3] if len(node.input) > 3 else ""
        shape = rw.graph.const_shape(mask) if mask else None
        if shape is not None and len(shape) >= 3 and shape[-3] > 1:
            kept_heads = np.unique(keep_q // q_size)
            rw.set_input(i, 3, np.take(rw.const(mask), kept_heads, axis=len(shape) - 3))

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        """Q K^T and P V: 2 * batch * q_heads * S * L * head_size (3-D: heads * head_size = the Q width)."""
        q, k = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not q or not k or len(q) != len(k) or len(q) not in (3, 4):
            return 0
        if len(q) == 3:
            return 2 * int(q[0]) * int(q[1]) * int(k[1]) * int(q[2])
        return 2 * int(q[0]) * int(q[1]) * int(q[2]) * int(k[2]) * int(q[3])

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        return (node.output[0],)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """The query's shape (Q and V of equal head size, the usual case)."""
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]])]


def _heads(node: NodeProto, labs: list[Labeled | None], rank: int) -> tuple[int, int] | None:
    """(query heads, KV heads) where Q, K and V split into them evenly, with whole query groups."""
    lq, lk, lv = labs
    if lq is None or lk is None or lv is None:
        return None
    if rank == 4:
        q_heads, kv_heads = lq.size, lk.size
        if lv.size != kv_heads:
            return None
    else:
        q_heads, kv_heads = int(attr(node, "q_num_heads", 0)), int(attr(node, "kv_num_heads", 0))
        if q_heads <= 0 or kv_heads <= 0 or lq.size % q_heads or lk.size % kv_heads or lv.size % kv_heads \
                or lq.size // q_heads != lk.size // kv_heads:
            return None
    return (q_heads, kv_heads) if kv_heads > 0 and q_heads % kv_heads == 0 else None


def _mask_follows(ctx: AnalysisContext, mask: str, q_heads: int) -> bool:
    """A mask without a head axis (or with one of size 1) broadcasts over any head count; a constant one with a
    head axis is sliced."""
    if ctx.labeled(mask) is not None:
        return False
    shape = ctx.graph.shape(mask)
    if shape is None:
        return False
    if len(shape) < 3 or shape[-3] == 1:
        return True
    return ctx.graph.const_shape(mask) is not None and shape[-3] == q_heads


@register
class RotaryEmbedding(ContribRotaryEmbedding):
    """ai.onnx RotaryEmbedding-23: as onnxruntime's (whole heads pass, ``num_heads`` follows the cut), with the
    inputs in the order X, cos_cache, sin_cache, position_ids."""

    op_types = ("RotaryEmbedding",)
    domain = ""
    cos_port = 1
