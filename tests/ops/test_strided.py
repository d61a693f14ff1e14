"""``as_strided`` copies (the dynamo exporter's AdaptiveAvgPool1d(1), Swin's pooler): Gather(Reshape(x, [-1]),
arange(B) * C + arange(C)) is x itself, proven by evaluating the indices; the channels pass through and the Gather
becomes Identity(x) (its index arithmetic, which holds C, goes). Any other order stays blocked."""
from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, cut, kept

C = 6


def _pooled_view(order: np.ndarray | None = None) -> tuple[onnx.ModelProto, str]:
    """x[batch, 8] -> MatMul (C) -> [batch, C, 1, 1] -> as_strided copy -> [batch, C] -> MatMul (3) -> y."""
    b = GraphBuilder(5)
    h = b.op("MatMul", ["x", b.const(b.randn(8, C), "W1")])
    x4 = b.op("Unsqueeze", [h, b.ints([2, 3])])
    flat = b.op("Reshape", [x4, b.ints([-1])])
    batch = b.op("Squeeze", [b.op("Slice", [b.op("Shape", ["x"]), b.ints([0]), b.ints([1])])])
    starts = b.op("Mul", [b.op("Range", [b.const(np.array(0)), batch, b.const(np.array(1))]),
                          b.const(np.array(C))])
    within = np.arange(C) if order is None else order
    indices = b.op("Add", [b.op("Unsqueeze", [starts, b.ints([1, 2, 3])]),
                           b.const(within.reshape(1, C, 1, 1).astype(np.int64))])
    view = b.op("Gather", [flat, indices], axis=0)
    y = b.op("MatMul", [b.op("Reshape", [view, b.ints([-1, C])]), b.const(b.randn(C, 3), "W2")])
    return _finish(b, y, x_shape=("batch", 8)), h


def test_an_in_order_view_passes_the_channels():
    model, h = _pooled_view()
    assert_groups(model, [(C, None), (3, OUT)])
    result = cut(model, (h, C, [0, 2, 4], 1))
    assert kept(result, h) == [0, 2, 4]
    ops = [n.op_type for n in result.model.graph.node]
    assert "Identity" in ops and "Gather" not in ops
    assert "Range" not in ops and "Shape" not in ops  # the index arithmetic went with the Gather


def test_a_reordering_view_stays_blocked():
    model, _ = _pooled_view(order=np.arange(C)[::-1].copy())
    assert_groups(model, [(C, "Reshape"), (3, OUT)])
