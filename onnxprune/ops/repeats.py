"""Axes that repeat one slice: multi-query attention shares one K/V head with every query head, and Hugging Face
writes the sharing as ``repeat_kv``: ``[B, 1, S, D] -Unsqueeze-> [B, 1, 1, S, D] -Expand-> [B, 1, H, S, D]
-Reshape-> [B, H, S, D]``. Cutting query heads shortens the repeat; the K/V head itself stays. The product that
pairs the query heads with such an axis makes its output a source of the heads (see ``linear._batched``), so that
masking a head zeroes its share exactly, and rewrites the repeat counts found here.
"""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import RewriteContext, attr
from onnxprune.ops.shape_entries import resolved_shape, set_shape_entry, shape_entry

__all__ = ["repeat_chain", "shorten_repeat"]

_MAX_DEPTH = 8


def repeat_chain(graph: Graph, tensor: str, axis: int) -> list[tuple[int, int]] | None:
    """(node, shape entry) pairs holding the length of ``tensor``'s ``axis`` where that axis repeats one slice:
    an Expand of a size-1 axis, possibly merged into the axis by a Reshape ``[.., 1, n, ..] -> [.., n, ..]``,
    through Transposes; every tensor on the way read by its next op only. ``None`` otherwise."""
    found = _walk(graph, tensor, axis)
    return found[0] if found is not None else None


def _walk(graph: Graph, tensor: str, axis: int) -> tuple[list[tuple[int, int]], list[str]] | None:
    """:func:`repeat_chain`, and the tensors on the way (whose shapes a shortened repeat changes)."""
    entries: list[tuple[int, int]] = []
    tensors: list[str] = []
    for _ in range(_MAX_DEPTH):
        tensors.append(tensor)
        producer = graph.producer.get(tensor)
        if producer is None or len(graph.consumer_nodes(tensor)) != 1 or tensor in graph.outputs:
            return None
        node = graph.nodes[producer]
        if node.op_type == "Transpose":
            rank = graph.rank(node.input[0])
            if rank is None:
                return None
            axis, tensor = list(attr(node, "perm") or reversed(range(rank)))[axis], node.input[0]
        elif node.op_type == "Reshape":
            entry = _merge_entry(graph, node, axis)
            if entry is None:
                return None
            if entry == 0:  # a fixed count to rewrite (-1 follows by itself)
                entries.append((producer, axis))
            axis, tensor = axis + 1, node.input[0]
        elif node.op_type == "Expand":
            found = _expand_entry(graph, producer, node, axis, entries)
            return (found, tensors) if found is not None else None
        else:
            return None
    return None


def _merge_entry(graph: Graph, node: NodeProto, axis: int) -> int | None:
    """Where the Reshape merges ``[.., 1, n, ..]`` of its input into ``[.., n, ..]`` at ``axis``, the other dims
    unchanged: -1 when its target's entry there is -1 (it follows by itself), 0 when it holds n (to rewrite);
    ``None`` where it does anything else."""
    src, inferred = graph.shape(node.input[0]), graph.shape(node.output[0])
    if src is None or inferred is None or len(src) != len(inferred) + 1 or axis + 1 >= len(src):
        return None
    dst = resolved_shape(graph, node, list(src), list(inferred))
    if src[axis] != 1 or src[axis + 1] != dst[axis] or not isinstance(dst[axis], int):
        return None
    if list(src[:axis]) != list(dst[:axis]) or list(src[axis + 2:]) != list(dst[axis + 1:]):
        return None
    entry = shape_entry(graph, node, axis)
    return -1 if entry == -1 else 0 if entry == dst[axis] else None


def _expand_entry(graph: Graph, index: int, node: NodeProto, axis: int, entries: list[tuple[int, int]]
                  ) -> list[tuple[int, int]] | None:
    in_shape, out_shape = graph.shape(node.input[0]), graph.shape(node.output[0])
    length = graph.shape(node.input[1])
    if in_shape is None or out_shape is None or not length or not isinstance(length[0], int):
        return None
    k = axis - (len(out_shape) - len(in_shape))
    entry = axis - (len(out_shape) - length[0])
    count = out_shape[axis]
    if k < 0 or entry < 0 or in_shape[k] != 1 or not isinstance(count, int) or count < 2:
        return None
    if shape_entry(graph, node, entry) != count:
        return None
    return [*entries, (index, entry)]


def shorten_repeat(rw: RewriteContext, tensor: str, axis: int, count: int) -> bool:
    """Repeat ``count`` times along ``tensor``'s ``axis`` (a :func:`repeat_chain`): False where it is none."""
    found = _walk(rw.graph, tensor, axis)
    if found is None:
        return False
    chain, tensors = found
    rw.reshaped(tensors)
    for j, entry in chain:
        node = rw.graph.nodes[j]
        if rw.graph.is_const(node.input[1]):
            shape = rw.const(node.input[1]).copy()
            shape[entry] = count
            rw.set_input(j, 1, shape)
        else:
            set_shape_entry(rw, j, node, 1, entry, count)
    return True
