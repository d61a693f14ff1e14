"""Structure handlers (onnxprune/ops/structure.py): ops that join, split, move, reshape, pool or reduce axes.
Expected index maps, constants and weights are worked out by hand here."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, attrs, const, cut, groups, kept, macs, name_of, node, port


def _tail(b: GraphBuilder, h: str, cin: int) -> str:
    """The blocked consumer every graph ends in: Conv(cin->2, 3x3) -> y."""
    return b.conv(h, cin, 2)


# -- Concat / Split / Slice / Gather ------------------------------------------------------------------------------
def test_concat_maps_each_input_to_its_offset():
    """x -+-> A: Conv(3->4) -+
          +-> B: Conv(3->3) -+-> Concat(axis=1) [7] -> C: Conv(7->2) -> y"""
    b = GraphBuilder(40)
    a, c = b.conv("x", 3, 4), b.conv("x", 3, 3)
    cat = b.op("Concat", [a, c], axis=1)
    y = _tail(b, cat, 7)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]), (c, 3, [0, 2]))
    assert kept(result, cat) == [0, 3, 4 + 0, 4 + 2]
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 3, 4, 6]])
    assert macs(result.model, name_of(y)) == (2 * 64) * 4 * 9


def test_concat_with_a_graph_input_fixes_its_channels():
    """x[3] -> A: Conv(3->4) -+-> Concat [7] -> Conv(7->2) -> y
    x ------------------------+      x's 3 channels: blocked (fixed)"""
    b = GraphBuilder(41)
    a = b.conv("x", 3, 4)
    model = _finish(b, _tail(b, b.op("Concat", [a, "x"], axis=1), 7))
    assert_groups(model, [(4, None), (3, "fixed channels from 'x'"), (2, OUT)])


@pytest.mark.parametrize("explicit", [True, False])
def test_split_sizes_are_rewritten(explicit):
    """x -> A: Conv(3->6) -> Split(axis=1, [2|4] or equal [3|3]) -> P: Conv(.->2), Q: Conv(.->2) -> Add -> y"""
    b = GraphBuilder(42)
    a = b.conv("x", 3, 6)
    sizes = [2, 4] if explicit else [3, 3]
    p, q = b.op("Split", [a, b.ints(sizes)] if explicit else [a], n_out=2, axis=1)
    pc, qc = b.conv(p, sizes[0], 2), b.conv(q, sizes[1], 2)
    model = _finish(b, b.op("Add", [pc, qc]))
    assert_groups(model, [(6, None), (2, OUT)])
    keep = [1, 2, 4, 5] if explicit else [0, 2, 3, 5]
    result = cut(model, (a, 6, keep))
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    np.testing.assert_array_equal(const(result.model, split.input[1]), [1, 3] if explicit else [2, 2])
    want_p, want_q = ([1], [0, 2, 3]) if explicit else ([0, 2], [0, 2])  # local indices of each chunk
    np.testing.assert_array_equal(port(result.model, name_of(pc), 1), port(model, name_of(pc), 1)[:, want_p])
    np.testing.assert_array_equal(port(result.model, name_of(qc), 1), port(model, name_of(qc), 1)[:, want_q])


def test_slice_bounds_are_rewritten():
    """x -> A: Conv(3->6) -> Slice(axis 1, [1:4]) -> C: Conv(3->2) -> y
    keep {0, 2, 3, 5}: the window [1, 4) holds 2 and 3, at new positions 1 and 2 -> Slice [1:3]"""
    b = GraphBuilder(43)
    a = b.conv("x", 3, 6)
    s = b.op("Slice", [a, b.ints([1]), b.ints([4]), b.ints([1])])
    y = _tail(b, s, 3)
    model = _finish(b, y)
    assert_groups(model, [(6, None), (2, OUT)])
    result = cut(model, (a, 6, [0, 2, 3, 5]))
    sl = node(result.model, name_of(s))
    assert list(const(result.model, sl.input[1])) == [1] and list(const(result.model, sl.input[2])) == [3]
    assert kept(result, s) == [1, 2]  # of the slice's 3 channels (1, 2, 3), channel 1 went
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [1, 2]])


def test_slice_striding_over_channels_blocks():
    """x -> Conv(3->6) -> Slice(axis 1, [0:6:2]) -> Conv(3->2) -> y"""
    b = GraphBuilder(44)
    s = b.op("Slice", [b.conv("x", 3, 6), b.ints([0]), b.ints([6]), b.ints([1]), b.ints([2])])
    assert_groups(_finish(b, _tail(b, s, 3)), [(6, "strides over the channel axis"), (2, OUT)])


def test_gather_indices_are_rewritten():
    """x -> A: Conv(3->4) -> Gather(axis=1, [3, 0, 2, 2]) -> C: Conv(4->2) -> y
    keep {0, 3}: gathered positions 0 (channel 3) and 1 (channel 0) survive; new indices [1, 0]"""
    b = GraphBuilder(45)
    a = b.conv("x", 3, 4)
    g = b.op("Gather", [a, b.ints([3, 0, 2, 2])], axis=1)
    y = _tail(b, g, 4)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]))
    assert kept(result, g) == [0, 1]
    np.testing.assert_array_equal(const(result.model, node(result.model, name_of(g)).input[1]), [1, 0])
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 1]])


def test_gather_with_channels_as_indices_blocks():
    """x -> A: Conv(3->4) -> Cast(int64) = idx;  Gather(data[10,8,8], idx) -> ... : A's values are indices"""
    b = GraphBuilder(46)
    idx = b.op("Cast", [b.op("Abs", [b.conv("x", 3, 4, k=1)])], to=7)
    data = b.const(b.randn(5, 2), "D")
    clipped = b.op("Mod", [idx, b.ints([5])])
    y = b.op("Gather", [data, clipped], axis=0)
    model = _finish(b, y)
    reasons = [r for _, r in groups(model)]
    assert reasons and "takes channels as indices" in reasons[0]


# -- axis movers ------------------------------------------------------------------------------------------------
def test_transpose_moves_the_channel_axis():
    """x -> A: Conv(3->4) -> Transpose(0,2,3,1) [1,8,8,4] -> B: MatMul(W[4,2]) -> y"""
    b = GraphBuilder(47)
    a = b.conv("x", 3, 4)
    t = b.op("Transpose", [a], perm=[0, 2, 3, 1])
    y = b.op("MatMul", [t, b.const(b.randn(4, 2), "M")])
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [1, 2]))
    assert next(e for e in result.plan.tensors if e.name == t).axis == 3
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[[1, 2]])
    assert macs(result.model, name_of(y)) == (1 * 8 * 8 * 2) * 2


def test_squeeze_unsqueeze_move_the_channel_axis():
    """x -> A: Conv(3->4) -> GAP [1,4,1,1] -> Squeeze(2,3) [1,4] -> Unsqueeze(0) [1,1,4] -> B: MatMul(4->2) -> y"""
    b = GraphBuilder(48)
    a = b.conv("x", 3, 4)
    s = b.op("Squeeze", [b.op("GlobalAveragePool", [a]), b.ints([2, 3])])
    u = b.op("Unsqueeze", [s, b.ints([0])])
    y = b.op("MatMul", [u, b.const(b.randn(4, 2), "M")])
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 2]))
    axes = {e.name: e.axis for e in result.plan.tensors}
    assert axes[s] == 1 and axes[u] == 2
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[[0, 2]])


def test_squeeze_of_the_channel_axis_blocks():
    """x -> Conv(3->1) -> Squeeze(1) [1,8,8] -> Unsqueeze(1) -> Conv(1->2) -> y"""
    b = GraphBuilder(49)
    s = b.op("Squeeze", [b.conv("x", 3, 1), b.ints([1])])
    model = _finish(b, _tail(b, b.op("Unsqueeze", [s, b.ints([1])]), 1))
    assert_groups(model, [(1, "removes the channel axis"), (2, OUT)])


def test_flatten_maps_a_channel_to_a_block_of_features():
    """x[1,3,2,2] -> A: Conv(3->4, 1x1) -> Flatten [1,16] -> G: Gemm(16->3) -> y
    channel c owns features 4c..4c+3"""
    b = GraphBuilder(50)
    a = b.conv("x", 3, 4, k=1)
    f = b.op("Flatten", [a], axis=1)
    y = b.gemm(f, 16, 3)
    model = _finish(b, y, x_shape=(1, 3, 2, 2))
    assert_groups(model, [(4, None), (3, OUT)])
    result = cut(model, (a, 4, [1, 3]))
    cols = [4, 5, 6, 7, 12, 13, 14, 15]
    assert kept(result, f) == cols
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, cols])
    assert macs(result.model, name_of(y)) == 1 * 3 * 8


@pytest.mark.parametrize("shape,want", [([1, 4], [1, 2]), ([1, -1], [1, -1]), ([0, 4], [0, 2])])
def test_reshape_shape_constant_follows_the_channels(shape, want):
    """x -> A: Conv(3->4) -> GAP [1,4,1,1] -> Reshape(shape) [1,4] -> G: Gemm(4->3) -> y"""
    b = GraphBuilder(51)
    a = b.conv("x", 3, 4)
    r = b.op("Reshape", [b.op("GlobalAveragePool", [a]), b.ints(shape)])
    y = b.gemm(r, 4, 3)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, OUT)])
    result = cut(model, (a, 4, [0, 1]))
    np.testing.assert_array_equal(const(result.model, node(result.model, name_of(r)).input[1]), want)
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 1]])


def test_channel_shuffle_ties_channels_in_units():
    """x -> A: Conv(3->4) -> Reshape [1,2,2,8,8] -> Transpose(0,2,1,3,4) -> Reshape [1,4,8,8] -> Conv(4->2) -> y
    channel c and c+2 are removed together: 2 units"""
    b = GraphBuilder(52)
    a = b.conv("x", 3, 4)
    h = b.op("Reshape", [a, b.ints([1, 2, 2, 8, 8])])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.ints([1, 4, 8, 8])])
    model = _finish(b, _tail(b, h, 4))
    assert_groups(model, [(2, None), (2, OUT)])
    result = cut(model, (a, 4, [1, 3]))
    np.testing.assert_array_equal(port(result.model, name_of(a), 1), port(model, name_of(a), 1)[[1, 3]])


# -- spatial ops, reductions, Pad, Resize, Softmax, Shape --------------------------------------------------------
def test_pools_pass_channels():
    """x -> A: Conv(3->4) -> MaxPool(2) [4x4] -> AveragePool(2) [2x2] -> C: Conv(4->2) -> y"""
    b = GraphBuilder(53)
    a = b.conv("x", 3, 4)
    h = b.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    y = _tail(b, h, 4)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [2, 3]))
    assert kept(result, h) == [2, 3]
    assert macs(model, name_of(y)) == (2 * 2 * 2) * 4 * 9 and macs(result.model, name_of(y)) == (2 * 2 * 2) * 2 * 9


def test_max_pool_indices_block():
    """x -> Conv(3->4) -> MaxPool(2, with Indices output) -> Conv(4->2) -> y"""
    b = GraphBuilder(54)
    h, _ = b.op("MaxPool", [b.conv("x", 3, 4)], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    model = _finish(b, _tail(b, h, 4))
    assert_groups(model, [(4, "returns indices"), (2, OUT)])


def test_resize_sizes_follow_the_channels():
    """x -> A: Conv(3->4) -> Resize(sizes [1,4,16,16]) -> C: Conv(4->2) -> y"""
    b = GraphBuilder(55)
    a = b.conv("x", 3, 4)
    r = b.op("Resize", [a, "", "", b.ints([1, 4, 16, 16])], mode="nearest")
    model = _finish(b, _tail(b, r, 4))
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 1, 3]))
    np.testing.assert_array_equal(const(result.model, node(result.model, name_of(r)).input[3]), [1, 3, 16, 16])


def test_resize_scaling_channels_blocks():
    """x -> Conv(3->4) -> Resize(scales [1,2,1,1]) -> Conv(8->2) -> y"""
    b = GraphBuilder(56)
    r = b.op("Resize", [b.conv("x", 3, 4), "", b.floats([1, 2, 1, 1])], mode="nearest")
    reasons = [r for _, r in groups(_finish(b, _tail(b, r, 8)))]
    assert "scales the channel axis" in reasons[0]


@pytest.mark.parametrize("axes,reason", [([2, 3], None), ([1], "reduces over the channel axis")])
def test_reduce(axes, reason):
    """x -> A: Conv(3->4) -> ReduceSum(axes, keepdims=1) -> C: Conv(4 or 1 -> 2) -> y"""
    b = GraphBuilder(57)
    a = b.conv("x", 3, 4)
    r = b.op("ReduceSum", [a, b.ints(axes)], keepdims=1)
    model = _finish(b, _tail(b, r, 4 if reason is None else 1))
    assert_groups(model, [(4, reason), (2, OUT)])
    if reason is None:
        assert kept(cut(model, (a, 4, [1, 2])), r) == [1, 2]


@pytest.mark.parametrize("pads,reason", [([0, 0, 1, 1, 0, 0, 1, 1], None),
                                         ([0, 1, 0, 0, 0, 0, 0, 0], "pads the channel axis")])
def test_pad(pads, reason):
    """x -> A: Conv(3->4) -> Pad(pads) -> C: Conv -> y"""
    b = GraphBuilder(58)
    a = b.conv("x", 3, 4)
    p = b.op("Pad", [a, b.ints(pads)], mode="constant")
    y = _tail(b, p, 4 if reason is None else 5)
    model = _finish(b, y)
    assert_groups(model, [(4, reason), (2, OUT)])
    if reason is None:
        result = cut(model, (a, 4, [0, 3]))
        assert macs(result.model, name_of(y)) == (2 * 10 * 10) * 2 * 9


@pytest.mark.parametrize("axis,reason", [(3, None), (1, "normalises over the channel axis")])
def test_softmax(axis, reason):
    """x -> A: Conv(3->4) -> Softmax(axis) -> C: Conv(4->2) -> y"""
    b = GraphBuilder(59)
    a = b.conv("x", 3, 4)
    s = b.op("Softmax", [a], axis=axis)
    model = _finish(b, _tail(b, s, 4))
    assert_groups(model, [(4, reason), (2, OUT)])
    if reason is None:
        assert kept(cut(model, (a, 4, [1, 3])), s) == [1, 3]


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
