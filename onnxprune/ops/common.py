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

