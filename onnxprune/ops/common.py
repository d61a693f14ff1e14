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
    if len(node.input) > 1 and node.input[1]:
        return _const_ints(ctx, node.input[1])
    return attr(node, "axes")
