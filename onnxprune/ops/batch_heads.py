"""Heads folded into a dynamic batch axis and back, as torch's ``nn.MultiheadAttention`` exports through the dynamo
exporter (torchvision's ViT)::

    q [L, B, H*D] -Reshape [L, -1, D]-> [L, B*H, D] -Transpose-> [B*H, L, D] -Reshape [-1, H, L, D]-> [B, H, L, D]

No single Reshape keeps the heads on an axis of their own (the middle tensors hold them as the inner factor of the
``B*H`` axis), so the first Reshape follows the chain to the Reshape that splits ``B*H`` again and labels that
output's head axis directly. The first Reshape's ``-1`` follows the cut by itself; the last one's head count is
rewritten by the ordinary Reshape rewrite.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.channels import Labeled
from onnxprune.core.handlers import AnalysisContext, attr
from onnxprune.ops.shape_entries import resolved_shape, shape_entry, shape_entry_source

__all__ = ["follow_batch_fold"]

_MAX_MOVES = 4  # layout ops allowed between the two Reshapes


def follow_batch_fold(ctx: AnalysisContext, i: int, node: NodeProto, lx: Labeled, src: list, dst: list,
                      regroup) -> bool:
    """Label the heads of a ``[.., B, C] -> [.., B*k, ..]`` Reshape at the Reshape that splits ``B*k`` into
    ``[B, k]`` again (through Transposes only); True when done, False when the pattern does not hold (the caller
    blocks). ``regroup`` is the Reshape handler's unit finder."""
    graph = ctx.graph
    axis = lx.axis
    b = axis - 1
    if b < 0 or isinstance(src[b], int) or len(dst) <= b or isinstance(dst[b], int):
        return False
    if list(src[:b]) != list(dst[:b]) or not _static(src[axis:]) or not _static(dst[b + 1:]):
        return False
    if shape_entry(graph, node, b) != -1:
        return False
    src_run, tail = [int(d) for d in src[axis:]], [int(d) for d in dst[b + 1:]]
    size, rest = int(np.prod(src_run)), int(np.prod(tail)) if tail else 1
    if rest <= 0 or size % rest or size // rest < 2:
        return False
    k = size // rest
    found = _unfold(ctx, node.output[0], b, k)
    if found is None:
        return False
    target, head_axis = found
    units, atoms_at = regroup(src_run, 0, [k, *tail], 0)
    for unit in units:
        ctx.tie(lx.atoms[np.repeat(unit[:1], len(unit) - 1)], lx.atoms[unit[1:]])
    if units:
        ctx.tag(lx.atoms, "head")
    ctx.set(target, head_axis, lx.atoms[atoms_at])
    return True


def _unfold(ctx: AnalysisContext, tensor: str, axis: int, k: int) -> tuple[str, int] | None:
    """Follow ``tensor`` (whose ``axis`` is ``B*k``) through single-consumer Transposes to a Reshape that splits it
    into ``[B, k]``, the other dims unchanged: (its output, the ``k`` axis)."""
    graph = ctx.graph
    for _ in range(_MAX_MOVES + 1):
        users = graph.consumer_nodes(tensor)
        if len(users) != 1 or users[0][1] != 0 or tensor in graph.outputs:
            return None
        user = graph.nodes[users[0][0]]
        if user.op_type == "Transpose":
            rank = graph.rank(tensor)
            if rank is None:
                return None
            perm = list(attr(user, "perm") or reversed(range(rank)))
            axis, tensor = perm.index(axis), user.output[0]
            continue
        if user.op_type != "Reshape":
            return None
        src, inferred = graph.shape(tensor), graph.shape(user.output[0])
        if src is None or inferred is None or not _batch_entry(ctx, user, axis) or \
                not _count_entry(ctx, user, axis + 1, k):
            return None
        dst = resolved_shape(graph, user, list(src), list(inferred))
        if len(dst) != len(src) + 1 or dst[axis + 1] != k or isinstance(dst[axis], int):
            return None
        if list(dst[:axis]) != list(src[:axis]) or list(dst[axis + 2:]) != list(src[axis + 1:]):
            return None
        if not _static(list(src[axis + 1:])):
            return None
        return user.output[0], axis + 1
    return None


def _batch_entry(ctx: AnalysisContext, node: NodeProto, index: int) -> bool:
    """The batch entry of the splitting Reshape: ``-1``, or an uncut axis's size read by ``Shape``."""
    if shape_entry(ctx.graph, node, index) == -1:
        return True
    source = shape_entry_source(ctx.graph, node.input[1], index)
    read = ctx.labeled(source[0]) if source is not None else None
    return source is not None and (read is None or read.axis != source[1])


def _count_entry(ctx: AnalysisContext, node: NodeProto, index: int, k: int) -> bool:
    """The head-count entry of the splitting Reshape: the constant ``k`` (the rewrite sets it), or the size of an
    axis that holds the same ``k`` heads, read by ``Shape`` (it follows the cut)."""
    if shape_entry(ctx.graph, node, index) == k:
        return True
    source = shape_entry_source(ctx.graph, node.input[1], index)
    read = ctx.labeled(source[0]) if source is not None else None
    return source is not None and read is not None and read.axis == source[1] and read.size == k


def _static(dims) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)
