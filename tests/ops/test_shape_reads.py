"""Shape (onnxprune/ops/shape_reads.py): reading the channel count blocks, unless it only rebuilds the tensor's own
shape for a Reshape that keeps the channels in place; reading other dims passes."""
from __future__ import annotations

import numpy as np
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, attrs, cut, groups, kept, name_of, node


def _tail(b: GraphBuilder, h: str, cin: int) -> str:
    """The blocked consumer every graph ends in: Conv(cin->2, 3x3) -> y."""
    return b.conv(h, cin, 2)


def test_shape_read_for_the_channel_count_blocks():
    """x -> A: Conv(3->4) = a -> Reshape(a, Shape(a)) -> C: Conv(4->2) -> y   (the 4 is read at run time)"""
    b = GraphBuilder(60)
    a = b.conv("x", 3, 4)
    r = b.op("Reshape", [a, b.op("Shape", [a])])
    model = _finish(b, _tail(b, r, 4))
    reasons = [r for _, r in groups(model)]
    assert "reads the channel count" in reasons[0]


def test_shape_of_spatial_dims_passes():
    """x -> A: Conv(3->4) = a -> Shape(a, start=2) = hw -> Expand(ones[1,1,1,1], Concat([1,1], hw)) = e
    Add(a, e) -> C: Conv(4->2) -> y          (only H and W are read: the group stays prunable)"""
    b = GraphBuilder(61)
    a = b.conv("x", 3, 4)
    hw = b.op("Shape", [a], start=2)
    ones = b.op("Expand", [b.const(np.ones((1, 1, 1, 1), np.float32), "one"),
                           b.op("Concat", [b.ints([1, 1]), hw], axis=0)])
    s = b.op("Add", [a, ones])
    model = _finish(b, _tail(b, s, 4))
    assert_groups(model, [(4, None), (2, OUT)])
    assert attrs(node(model, name_of(hw)))["start"] == 2
    assert kept(cut(model, (a, 4, [0, 2])), s) == [0, 2]


def test_flatten_written_with_shape_slice_concat_prunes():
    """x -> A: Conv(3->4) = a -> Reshape(a, Concat(Shape(a)[0:2], [-1])) [1,4,64] -> Transpose -> MatMul(4->3)
    -> y (torch's legacy export of a.flatten(2).transpose(1, 2), as in ViT): the channel count only rebuilds a's
    own shape, which follows the cut unchanged"""
    b = GraphBuilder(62)
    a = b.conv("x", 3, 4)
    lead = b.op("Slice", [b.op("Shape", [a]), b.ints([0]), b.ints([2])])
    r = b.op("Reshape", [a, b.op("Concat", [lead, b.ints([-1])], axis=0)])
    y = b.op("MatMul", [b.op("Transpose", [r], perm=[0, 2, 1]), b.const(b.randn(4, 3), "W")])
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, OUT)])
    result = cut(model, (a, 4, [1, 3]))
    reshape = next(n for n in result.model.graph.node if n.op_type == "Reshape")
    assert reshape.input[1] == next(n for n in model.graph.node if n.op_type == "Reshape").input[1]
    assert not [n for n in result.model.graph.node if n.op_type == "ScatterElements"]  # Shape(a) reads the cut


def test_a_channel_count_read_for_another_tensor_blocks():
    """x -> A: Conv(3->4) = a (read by Shape only); B: Conv(3->4) = c -> Reshape(c, Concat(Shape(a)[0:2], [-1]))
    -> Transpose -> MatMul(4->3) -> y:  a's count shapes another tensor, so a is blocked; c prunes"""
    b = GraphBuilder(63)
    a = b.conv("x", 3, 4)
    c = b.conv("x", 3, 4)
    lead = b.op("Slice", [b.op("Shape", [a]), b.ints([0]), b.ints([2])])
    r = b.op("Reshape", [c, b.op("Concat", [lead, b.ints([-1])], axis=0)])
    y = b.op("MatMul", [b.op("Transpose", [r], perm=[0, 2, 1]), b.const(b.randn(4, 3), "W")])
    model = _finish(b, y)
    assert_groups(model, [(4, "reads the channel count"), (4, None), (3, OUT)])


def test_a_channel_count_that_shapes_a_moved_copy_prunes():
    """x -> A: Conv(3->4) = a -> Transpose NHWC = t [1,8,8,4] -> Reshape(t, [1,2,4,2,4] + Shape(t)[3]) -> Transpose
    -> Reshape(.., [-1,16] + Shape(t)[3]) [4,16,4] -> MatMul(4->3) -> y (Swin's window partition in the legacy
    export): the count read from t lands, whole, on the last axis of both reshapes; the second reshapes a moved copy
    of t, checked once the walk has labelled it, and gets the cut count written in"""
    b = GraphBuilder(64)
    a = b.conv("x", 3, 4)
    t = b.op("Transpose", [a], perm=[0, 2, 3, 1])
    count = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [t]), b.ints(3)]), b.ints([0])])
    windows = b.op("Reshape", [t, b.op("Concat", [b.ints([1, 2, 4, 2, 4]), count], axis=0)])
    moved = b.op("Transpose", [windows], perm=[0, 1, 3, 2, 4, 5])
    flat = b.op("Reshape", [moved, b.op("Concat", [b.ints([-1, 16]), count], axis=0)])
    y = b.op("MatMul", [flat, b.const(b.randn(4, 3), "W")])
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, OUT)])
    cut(model, (a, 4, [0, 3]))


def test_a_channel_count_that_shapes_another_groups_copy_blocks():
    """As above, but the count read from A's t shapes the window reshape of B's channels (another group of the same
    size): checked once the walk has labelled that reshape, A blocks; B prunes (its own entry is rewritten)"""
    b = GraphBuilder(65)
    a = b.conv("x", 3, 4)
    c = b.conv("x", 3, 4)
    t, u = (b.op("Transpose", [v], perm=[0, 2, 3, 1]) for v in (a, c))
    count = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [t]), b.ints(3)]), b.ints([0])])
    flat = b.op("Reshape", [u, b.op("Concat", [b.ints([1, 64]), count], axis=0)])
    y = b.op("Add", [b.op("MatMul", [flat, b.const(b.randn(4, 3), "W")]),
                     b.op("MatMul", [b.op("Reshape", [t, b.ints([1, 64, 4])]), b.const(b.randn(4, 3), "W")])])
    model = _finish(b, y)
    assert_groups(model, [(4, "reads the channel count"), (4, None), (3, OUT)])
    cut(model, (c, 4, [1, 2]))
