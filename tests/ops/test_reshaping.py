"""Reshaping handlers (onnxprune/ops/reshaping.py): Transpose, (Un)Squeeze, Flatten, Reshape move or regroup
the channel axis; Shape reads it. Expected index maps and constants are worked out by hand here."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, const, cut, kept, macs, name_of, node, port


def _tail(b: GraphBuilder, h: str, cin: int) -> str:
    """The blocked consumer every graph ends in: Conv(cin->2, 3x3) -> y."""
    return b.conv(h, cin, 2)


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
