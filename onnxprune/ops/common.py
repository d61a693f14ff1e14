"""Small helpers the op handlers share."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.handlers import attr


def _pass(ctx, node: NodeProto, axis: int, atoms: np.ndarray) -> None:
    ctx.set(node.output[0], axis, atoms)


def _const_ints(ctx, name: str) -> list[int] | None:
    if not name:
        return None
    v = ctx.graph.const(name)
    return None if v is None else [int(x) for x in np.asarray(v).ravel()]


def _axes_of(ctx, node: NodeProto) -> list[int] | None:
    return axes_of(ctx.graph, node)


def axes_of(graph, node: NodeProto) -> list[int] | None:
    """The axes of an (Un)Squeeze or reduction: its constant second input (newer opsets) or attribute."""
    if len(node.input) > 1 and node.input[1]:
        v = graph.const(node.input[1])
        return None if v is None else [int(x) for x in np.asarray(v).ravel()]
    axes = attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def value_ints(graph, name: str) -> list[int] | None:
    """The integers of a constant or of a small tensor computed from constants alone (``Graph.value``)."""
    value = graph.value(name) if name else None
    return None if value is None else [int(v) for v in np.asarray(value).ravel()]


def tie_heads(ctx, atoms: np.ndarray, head_dim: int) -> np.ndarray:
    """Tie each head_dim block of ``atoms`` into one unit (a head); the first atom of every head."""
    heads = atoms.reshape(-1, head_dim)
    for k in range(1, head_dim):
        ctx.tie(heads[:, 0], heads[:, k])
    return heads[:, 0]


def entries_taken(graph, user: NodeProto, length: int) -> list[int] | None:
    """The entries of a shape vector of ``length`` that a Gather or Slice (``user``) takes, or ``None`` if not
    known."""
    def ints(k: int) -> list[int] | None:
        return value_ints(graph, user.input[k]) if len(user.input) > k else None

    if user.op_type == "Gather":
        idx = ints(1)
        return None if idx is None else [x % length for x in idx]
    if user.op_type == "Slice" and len(user.input) >= 3:
        starts, ends, steps = ints(1), ints(2), ints(4) or [1]
        if starts is None or ends is None or len(starts) != 1 or (ints(3) or [0])[0] != 0:
            return None
        return list(range(length))[slice(starts[0], ends[0], steps[0])]
    return None


def shape_entry_source(graph, name: str, index: int, depth: int = 0) -> tuple[str, int] | None:
    """(tensor, axis) when entry ``index`` of the shape vector ``name`` is the size of ``tensor``'s ``axis``
    read by ``Shape`` (through Slice, Gather, Concat, (Un)Squeeze, Cast, Identity); ``None`` otherwise."""
    producer = graph.producer.get(name)
    node = graph.nodes[producer] if producer is not None and depth < 8 else None
    if node is None:
        return None
    if node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return shape_entry_source(graph, node.input[0], index, depth + 1)
    if node.op_type == "Concat":
        for piece in node.input:
            length = graph.shape(piece)
            if not length or not isinstance(length[0], int):
                return None
            if index < length[0]:
                return shape_entry_source(graph, piece, index, depth + 1)
            index -= length[0]
        return None
    if node.op_type in ("Slice", "Gather"):
        length = graph.shape(node.input[0])
        taken = entries_taken(graph, node, length[0]) if length and isinstance(length[0], int) else None
        return shape_entry_source(graph, node.input[0], taken[index], depth + 1) if taken and index < len(taken) \
            else None
    if node.op_type == "Shape":
        rank = graph.rank(node.input[0])
        start = int(attr(node, "start", 0))
        start = start % rank if rank and start < 0 else start
        return node.input[0], start + index
    return None
