"""Spatial handlers (onnxprune/ops/spatial.py): pools, Resize, reductions, Pad and Softmax work along other
axes and pass the channels, or block them where they touch the channel axis."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, const, cut, groups, kept, macs, name_of, node


def _tail(b: GraphBuilder, h: str, cin: int) -> str:
    """The blocked consumer every graph ends in: Conv(cin->2, 3x3) -> y."""
    return b.conv(h, cin, 2)


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


@pytest.mark.parametrize("op,axes,reason", [("ReduceSum", [2, 3], None), ("ReduceSum", [1], None),
                                             ("ReduceMean", [1], None), ("ReduceL2", [1], None),
                                             ("ReduceMax", [1], "reduces over the channel axis")])
def test_reduce(op, axes, reason):
    """x -> A: Conv(3->4) -> Reduce(axes, keepdims=1) -> C: Conv(4 or 1 -> 2) -> y
    Sums over the channels stay exact with removed channels at zero (a mean keeps dividing by 4); a max does not."""
    b = GraphBuilder(57)
    a = b.conv("x", 3, 4)
    if op == "ReduceSum":  # opset 17: ReduceSum takes its axes as an input, the others as an attribute
        r = b.op(op, [a, b.ints(axes)], keepdims=1)
    else:
        r = b.op(op, [a], keepdims=1, axes=axes)
    model = _finish(b, _tail(b, r, 1 if 1 in axes else 4))
    assert_groups(model, [(4, reason), (2, OUT)])
    if reason is None:
        result = cut(model, (a, 4, [1, 2]))
        assert kept(result, r) == ([1, 2] if 1 not in axes else None)
        shares = [n for n in result.model.graph.node if n.op_type == "Mul"]
        assert [float(const(result.model, n.input[1])) for n in shares] == ([0.5] if op == "ReduceMean" else [])


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
