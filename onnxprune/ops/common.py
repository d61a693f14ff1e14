"""Small helpers the op handlers share."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import Handler, RankOf, Shapes, attr, same_rank


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


class AttentionShapes(Handler):
    """What attention ops on projected Q, K and V share: the output has the query's shape (Q and V of equal
    head size, the usual case) and the work is Q K^T and P V, scaling with the output's heads."""

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        """2 * batch * S * L * D (3-D ``[B, S, H*D]``: H*D the query width) or 2 * B * H * S * L * D (4-D)."""
        q, k = shapes.get(node.input[0]), shapes.get(node.input[1]) if len(node.input) > 1 else None
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
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]])]


def tie_heads(ctx, atoms: np.ndarray, head_dim: int) -> np.ndarray:
    """Tie each head_dim block of ``atoms`` into one unit (a head); the first atom of every head."""
    heads = atoms.reshape(-1, head_dim)
    for k in range(1, head_dim):
        ctx.tie(heads[:, 0], heads[:, k])
    return heads[:, 0]

