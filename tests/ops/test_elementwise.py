"""Elementwise handlers (onnxprune/ops/elementwise.py): unary ops pass channels; n-ary ops tie labeled operands,
slice per-channel constants, let scalars pass, and block what they cannot follow."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, cut, kept, name_of, port


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "HardSwish", "Identity", "Abs"])
def test_unary_ops_pass_channels(op):
    """x -> A: Conv(3->4) -> <op> -> B: Conv(4->2) -> y"""
    b = GraphBuilder(30)
    a = b.conv("x", 3, 4)
    u = b.op(op, [a])
    y = b.conv(u, 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]))
    assert kept(result, u) == [0, 3]
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 3]])


def test_clip_with_scalar_bounds_passes_and_tensor_bounds_block():
    """x -> Conv(3->4) -> Clip(0, 6) -> Conv(4->2) -> y;   and Clip(0, max[4,1,1]) blocks"""
    b = GraphBuilder(31)
    a = b.conv("x", 3, 4)
    model = _finish(b, b.conv(b.relu6(a), 4, 2))
    assert_groups(model, [(4, None), (2, OUT)])
    cut(model, (a, 4, [1, 2]))
    b = GraphBuilder(31)
    a = b.conv("x", 3, 4)
    c = b.op("Clip", [a, b.floats(0.0), b.const(np.full((4, 1, 1), 6.0, np.float32), "max")])
    assert_groups(_finish(b, b.conv(c, 4, 2)), [(4, "non-scalar bounds"), (2, OUT)])


def test_prelu_slopes_follow():
    """x -> A: Conv(3->4) -> PRelu(slope[4,1,1]) -> B: Conv(4->2) -> y"""
    b = GraphBuilder(32)
    a = b.conv("x", 3, 4)
    p = b.op("PRelu", [a, b.const(b.rng.uniform(0.05, 0.5, (4, 1, 1)).astype(np.float32), "slope")])
    model = _finish(b, b.conv(p, 4, 2))
    result = cut(model, (a, 4, [0, 2]))
    np.testing.assert_array_equal(port(result.model, name_of(p), 1), port(model, name_of(p), 1)[[0, 2]])
    assert port(result.model, name_of(p), 1).shape == (2, 1, 1)


def test_per_channel_constants_are_sliced_and_scalars_pass():
    """x -> A: Conv(3->4) -> Mul(s[1,4,1,1]) -> Add(t[4,1,1]) -> Div(2.0) -> B: Conv(4->2) -> y"""
    b = GraphBuilder(33)
    a = b.conv("x", 3, 4)
    m = b.op("Mul", [a, b.const(b.rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32), "s")])
    t = b.op("Add", [m, b.const(b.randn(4, 1, 1), "t")])
    d = b.op("Div", [t, b.floats(2.0)])
    y = b.conv(d, 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [1, 3]))
    assert kept(result, d) == [1, 3]
    new = result.model
    np.testing.assert_array_equal(port(new, name_of(m), 1), port(model, name_of(m), 1)[:, [1, 3]])
    np.testing.assert_array_equal(port(new, name_of(t), 1), port(model, name_of(t), 1)[[1, 3]])
    np.testing.assert_array_equal(port(new, name_of(d), 1), np.float32(2.0))


def test_add_ties_two_producers_into_one_group():
    """x -+-> A: Conv(3->4) -+
          +-> B: Conv(3->4) -+-> Add -> C: Conv(4->2) -> y      one group {A, B} of 4"""
    b = GraphBuilder(34)
    a, c = b.conv("x", 3, 4), b.conv("x", 3, 4, k=1)
    s = b.op("Add", [a, c])
    y = b.conv(s, 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 1]))
    assert kept(result, c) == [0, 1] and kept(result, s) == [0, 1]
    for n in (name_of(a), name_of(c)):
        np.testing.assert_array_equal(port(result.model, n, 1), port(model, n, 1)[[0, 1]])


def test_broadcasting_one_channel_against_many_blocks():
    """x -+-> A: Conv(3->4) -+
          +-> B: Conv(3->1) -+-> Add (broadcasts B's one channel over 4) -> Conv(4->2) -> y"""
    b = GraphBuilder(35)
    s = b.op("Add", [b.conv("x", 3, 4), b.conv("x", 3, 1)])
    model = _finish(b, b.conv(s, 4, 2))
    assert_groups(model, [(4, "broadcasts a channel tensor"), (1, "broadcasts a channel tensor"), (2, OUT)])


def test_combining_with_a_computed_operand_blocks():
    """x -> A: Conv(3->4) = a;  Add(a, Relu(K[1,4,8,8]), a computed tensor) -> Conv(4->2) -> y
    The other operand has 4 channels that no plan can cut: a fixed operand."""
    b = GraphBuilder(36)
    a = b.conv("x", 3, 4)
    fixed = b.op("Relu", [b.const(b.randn(1, 4, 8, 8), "K")])
    model = _finish(b, b.conv(b.op("Add", [a, fixed]), 4, 2))
    assert_groups(model, [(4, "fixed operand"), (2, OUT)])
