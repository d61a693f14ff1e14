"""ai.onnx ``Attention`` and ``RotaryEmbedding`` (opset 23). Attention: scaled dot-product attention on projected
Q, K and V, 3-D (``[batch, tokens, heads * head_size]`` with ``q_num_heads`` / ``kv_num_heads``) or 4-D
(``[batch, heads, tokens, head_size]``, as the dynamo exporter writes ``scaled_dot_product_attention`` at opset 23).

Heads are the units. With grouped-query attention (``q_num_heads = g * kv_num_heads``) a KV head goes with its g
query heads; the output's head h reads V's head h // g. Cutting heads lowers the head counts; the scale (from
head_size) stays. A KV cache (past/present) or the ``qk_matmul_output`` keeps the heads, with the reason: those
shapes are the model's interface. A mask with a head axis is sliced where it is constant.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from onnxprune.core.channels import Labeled
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, RewriteContext, attr, register
from onnxprune.ops.common import AttentionShapes, tie_heads
from onnxprune.ops.contrib_heads import RotaryEmbedding as ContribRotaryEmbedding
from onnxprune.ops.repeats import repeat_chain, shorten_repeat


@register
class Attention(AttentionShapes):
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
        elif _shared_kv(ctx.graph, ctx.labeled, node, rank):
            _query_heads(i, node, ctx, label, rank or 0)
            return
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
        _mask_heads(i, node, ctx, firsts[0])
        ctx.set(node.output[0], 2 if rank == 3 else 1, out)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep_q, keep_k = rw.keep(node.input[0]), rw.keep(node.input[1])
        rank = rw.graph.rank(node.input[0])
        if keep_q is not None and _shared_kv(rw.graph, rw.labeled, node, rank):
            lq = rw.label(node.input[0])
            head_size = lq.size // _query_count(node, lq, rank) if rank == 3 else 1
            kept = len(keep_q) // head_size
            if attr(node, "q_num_heads") is not None:
                rw.set_attr(i, "q_num_heads", kept)
            for name in node.input[1:3] if rank == 4 else ():
                shorten_repeat(rw, name, 1, kept)
            _cut_mask(i, node, rw, keep_q // head_size)
            return
        if keep_q is None or keep_k is None:
            return
        lq, lk = rw.label(node.input[0]), rw.label(node.input[1])
        heads = _heads(node, [lq, lk, rw.label(node.input[2])], rank or 0)
        if heads is None:
            return
        q_size, kv_size = (lq.size // heads[0], lk.size // heads[1]) if rank == 3 else (1, 1)
        q_kept, kv_kept = len(keep_q) // q_size, len(keep_k) // kv_size
        for name, value, given in (("q_num_heads", q_kept, attr(node, "q_num_heads")),
                                   ("kv_num_heads", kv_kept, attr(node, "kv_num_heads"))):
            if given is not None:
                rw.set_attr(i, name, value)
        _cut_mask(i, node, rw, keep_q // q_size)


def _per_head_mask(graph: Graph, node: NodeProto) -> tuple[str, int] | None:
    """(name, head axis) of a constant attention mask with a head axis of more than one."""
    mask = node.input[3] if len(node.input) > 3 else ""
    shape = graph.const_shape(mask) if mask else None
    return (mask, len(shape) - 3) if shape is not None and len(shape) >= 3 and shape[-3] > 1 else None


def _mask_heads(i: int, node: NodeProto, ctx: AnalysisContext, heads: np.ndarray) -> None:
    """Declare a constant per-head mask's head axis (one atom per query head)."""
    found = _per_head_mask(ctx.graph, node)
    if found is not None:
        ctx.weight(found[0], heads, "const", i, axis=found[1])


def _cut_mask(i: int, node: NodeProto, rw: RewriteContext, query_heads: np.ndarray) -> None:
    """Keep a constant per-head mask's slices of the kept query heads (``query_heads``: their indices, repeated
    per kept channel)."""
    found = _per_head_mask(rw.graph, node)
    if found is not None:
        rw.set_input(i, 3, np.take(rw.const(found[0]), np.unique(query_heads), axis=found[1]))


def _shared_kv(graph: Graph, labeled: Callable[[str], Labeled | None], node: NodeProto, rank: int | None) -> bool:
    """Multi-query attention: query heads labeled, K and V one head for all (3-D: ``kv_num_heads`` 1; 4-D: a
    head axis of 1 or one head repeated, :mod:`onnxprune.ops.repeats`) whose channels are not heads."""
    lq = labeled(node.input[0])
    if lq is None or rank not in (3, 4) or lq.axis != (2 if rank == 3 else 1) or _query_count(node, lq, rank) < 2:
        return False
    if rank == 3:
        return int(attr(node, "kv_num_heads", 0)) == 1
    for name in node.input[1:3]:
        lab, shape = labeled(name), graph.shape(name)
        if (lab is not None and lab.axis == 1) or shape is None or len(shape) != 4:
            return False
        if shape[1] != 1 and repeat_chain(graph, name, 1) is None:
            return False
    return True


def _query_count(node: NodeProto, lq: Labeled, rank: int | None) -> int:
    heads = lq.size if rank == 4 else int(attr(node, "q_num_heads", 0))
    return heads if heads > 0 and lq.size % heads == 0 else 0


def _query_heads(i: int, node: NodeProto, ctx: AnalysisContext, label: str, rank: int) -> None:
    """Multi-query attention: the query heads are the units, K and V stay whole; the output starts a source of
    the heads (a masked query head still attends, to the shared V: the output is masked with it)."""
    lq = ctx.labeled(node.input[0])
    assert lq is not None
    for name in node.input[1:3]:
        lab = ctx.labeled(name)
        if lab is not None:
            ctx.block(lab.atoms, f"{label}: the channels of the K/V head shared by every query head stay")
    mask = node.input[3] if len(node.input) > 3 else ""
    heads = _query_count(node, lq, rank)
    if mask and not _mask_follows(ctx, mask, heads):
        ctx.block(lq.atoms, f"{label} has a computed attention mask per head")
        return
    firsts = tie_heads(ctx, lq.atoms, lq.size // heads) if rank == 3 else lq.atoms
    ctx.tag(lq.atoms, "head")
    out_shape = ctx.graph.shape(node.output[0])
    width = out_shape[2] if rank == 3 and out_shape is not None else heads
    if not isinstance(width, int) or width % heads:
        ctx.block(lq.atoms, f"{label}: the output width does not divide into {heads} heads")
        return
    out = ctx.source(i, node.output[0], 2 if rank == 3 else 1, width)
    ctx.tie(out, np.repeat(firsts, width // heads))
    _mask_heads(i, node, ctx, firsts)


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
