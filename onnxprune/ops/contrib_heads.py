"""com.microsoft attention ops that take Q, K and V already projected: ``MultiHeadAttention`` (3-D query, key and
value ``[batch, tokens, heads * head_dim]``, optional packed bias and per-head attention bias), ``RotaryEmbedding``
(rotates pairs inside each head) and ``GroupQueryAttention`` (always with a KV cache).

Heads are the units: the channels of each head_dim block of Q, K and V are tied into one head, head h of Q, K and V
and of the output go together, and cutting heads lowers ``num_heads``. A KV cache (``past``/``present``) keeps
the heads, with the reason: its shapes are the model's interface.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.handlers import (
    AnalysisContext,
    Handler,
    RankOf,
    RewriteContext,
    attr,
    register,
    same_rank,
)
from onnxprune.ops.common import AttentionShapes, tie_heads

DOMAIN = "com.microsoft"


@register
class MultiHeadAttention(AttentionShapes):
    op_types = ("MultiHeadAttention",)
    domain = DOMAIN

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        label = f"MultiHeadAttention {ctx.node_label(i)}"
        inputs = list(node.input) + [""] * 8
        q, k, v, bias, _, attention_bias, past_k, past_v = inputs[:8]
        labs = [ctx.labeled(n) for n in (q, k, v)]
        if not any(labs):
            return
        heads = int(attr(node, "num_heads", 0))
        ranks = [ctx.graph.rank(n) for n in (q, k, v)]
        reason = None
        if past_k or past_v or any(o for o in node.output[1:]):
            reason = f"{label} has a KV cache (past/present): its heads stay"
        elif any(lab is None or r != 3 or lab.axis != 2 for lab, r in zip(labs, ranks)) or heads <= 0:
            reason = f"{label} reads packed, 4-D or fixed Q/K/V: its heads stay"
        elif any(lab is not None and lab.size % heads for lab in labs) or _sizes(labs)[0] != _sizes(labs)[1]:
            reason = f"{label}: Q/K/V widths do not divide into {heads} heads"
        elif (bias and not ctx.graph.is_const(bias)) or (attention_bias and not _per_head_const(ctx, attention_bias)):
            reason = f"{label} has a computed bias"
        if reason is not None:
            ctx.block_inputs(i, reason)
            return
        lq, lk, lv = labs
        assert lq is not None and lk is not None and lv is not None
        firsts = [tie_heads(ctx, lab.atoms, lab.size // heads) for lab in (lq, lk, lv)]
        ctx.tie(firsts[0], firsts[1])
        ctx.tie(firsts[0], firsts[2])
        ctx.tag(lq.atoms, "head")
        if bias:
            ctx.weight(bias, np.concatenate([lq.atoms, lk.atoms, lv.atoms]), "const", i)
        shape = ctx.graph.const_shape(attention_bias) if attention_bias else None
        if shape is not None and shape[1] == heads:  # a bias per head (relative positions)
            ctx.weight(attention_bias, firsts[0], "const", i, axis=1)
        ctx.set(node.output[0], 2, lv.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep_q, keep_k, keep_v = (rw.keep(n) for n in node.input[:3])
        if keep_q is None or keep_k is None or keep_v is None:
            return
        heads = int(attr(node, "num_heads", 0))
        size_q, size_k = rw.label(node.input[0]).size, rw.label(node.input[1]).size
        rw.set_attr(i, "num_heads", len(keep_q) // (size_q // heads))
        if len(node.input) > 3 and node.input[3]:
            rw.set_input(i, 3, rw.const(node.input[3])[np.concatenate(
                [keep_q, size_q + keep_k, size_q + size_k + keep_v])])
        if len(node.input) > 5 and node.input[5]:
            kept_heads = np.unique(keep_q // (size_q // heads))
            value = rw.const(node.input[5])
            if value.shape[1] > 1:
                rw.set_input(i, 5, np.take(value, kept_heads, axis=1))


def _sizes(labs: list) -> list[int]:
    return [lab.size if lab is not None else 0 for lab in labs]


def _per_head_const(ctx: AnalysisContext, name: str) -> bool:
    shape = ctx.graph.const_shape(name)
    return shape is not None and len(shape) == 4


@register
class RotaryEmbedding(Handler):
    op_types = ("RotaryEmbedding",)
    domain = DOMAIN
    cos_port = 2  # input, position_ids, cos_cache, sin_cache

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Rotation pairs channels inside a head: whole heads pass ([B, S, H*D] heads tied here, [B, H, S, D]
        heads already on axis 1); channels on the head_dim axis block."""
        lx = ctx.labeled(node.input[0])
        for name in node.input[1:]:
            if ctx.labeled(name) is not None:
                ctx.block_inputs(i, f"RotaryEmbedding {ctx.node_label(i)} reads channels in its position inputs")
                return
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        cos = ctx.graph.const_shape(node.input[self.cos_port]) if len(node.input) > self.cos_port else None
        heads = int(attr(node, "num_heads", 0))
        rotary = int(attr(node, "rotary_embedding_dim", 0))
        label = f"RotaryEmbedding {ctx.node_label(i)}"
        if rank == 4 and lx.axis == 1:
            ctx.set(node.output[0], 1, lx.atoms)
            return
        head_dim = lx.size // heads if heads > 0 and lx.size % heads == 0 else (2 * cos[-1] if cos else 0)
        if rank != 3 or lx.axis != 2 or head_dim <= 0 or lx.size % head_dim or (rotary and rotary > head_dim):
            ctx.block(lx.atoms, f"{label} rotates channels whose heads onnxprune cannot tell")
            return
        tie_heads(ctx, lx.atoms, head_dim)
        ctx.tag(lx.atoms, "head")
        ctx.set(node.output[0], 2, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep, heads = rw.keep(node.input[0]), int(attr(node, "num_heads", 0))
        lx = rw.labeled(node.input[0])
        if keep is not None and heads > 0 and lx is not None and lx.axis == 2:
            rw.set_attr(i, "num_heads", len(keep) // (lx.size // heads))

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]])]


@register
class GroupQueryAttention(Handler):
    op_types = ("GroupQueryAttention",)
    domain = DOMAIN

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        ctx.block_inputs(i, f"GroupQueryAttention {ctx.node_label(i)} has a KV cache (past/present): its heads stay")

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]])]
