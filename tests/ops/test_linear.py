"""Gemm and MatMul handlers (onnxprune/ops/linear.py): hidden features are a group; the consumer's reduction
rows follow them. Expected weights are sliced here with numpy from the plan's kept indices."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, cut, groups, kept, macs, name_of, port


@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_hidden_features(trans_b):
    """x[1,6] -> A: Gemm(6->4, transB) -> Relu -> B: Gemm(4->3, transB) -> y
                 \\___ group 4 ___/               group 3 (blocked)"""
    b = GraphBuilder(10)
    a = b.gemm("x", 6, 4, trans_b=trans_b)
    y = b.gemm(b.relu(a), 4, 3, trans_b=trans_b)
    model = _finish(b, y, x_shape=(1, 6))
    assert_groups(model, [(4, None), (3, OUT)])
    an, bn = name_of(a), name_of(y)
    assert macs(model, an) == 1 * 4 * 6 and macs(model, bn) == 1 * 3 * 4  # M x N x K
    result = cut(model, (a, 4, [0, 2, 3]))
    new = result.model
    wa, wb = port(model, an, 1), port(model, bn, 1)
    if trans_b:  # W is [N, K]
        want_a, want_b = wa[[0, 2, 3]], wb[:, [0, 2, 3]]
    else:  # W is [K, N]
        want_a, want_b = wa[:, [0, 2, 3]], wb[[0, 2, 3]]
    np.testing.assert_array_equal(port(new, an, 1), want_a)
    np.testing.assert_array_equal(port(new, an, 2), port(model, an, 2)[[0, 2, 3]])
    np.testing.assert_array_equal(port(new, bn, 1), want_b)
    np.testing.assert_array_equal(port(new, bn, 2), port(model, bn, 2))
    assert macs(new, an) == 1 * 3 * 6 and macs(new, bn) == 1 * 3 * 3


def test_matmul_with_bias_add():
    """x[1,5,6] -> A: MatMul(W[6,4]) -> Add(b[4]) -> Relu -> B: MatMul(W[4,3]) -> y
    The features are on the last axis; the bias of the Add follows them."""
    b = GraphBuilder(11)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 4), "M")])
    biased = b.op("Add", [a, b.const(b.randn(4), "Mb")])
    y = b.op("MatMul", [b.relu(biased), b.const(b.randn(4, 3), "M")])
    model = _finish(b, y, x_shape=(1, 5, 6))
    assert_groups(model, [(4, None), (3, OUT)])
    an, bn, add = name_of(a), name_of(y), name_of(biased)
    assert macs(model, an) == (1 * 5 * 4) * 6
    result = cut(model, (a, 4, [1, 2], 2))
    assert kept(result, biased) == [1, 2]
    new = result.model
    np.testing.assert_array_equal(port(new, an, 1), port(model, an, 1)[:, [1, 2]])
    np.testing.assert_array_equal(port(new, add, 1), port(model, add, 1)[[1, 2]])
    np.testing.assert_array_equal(port(new, bn, 1), port(model, bn, 1)[[1, 2]])
    assert macs(new, an) == (1 * 5 * 2) * 6 and macs(new, bn) == (1 * 5 * 3) * 2


def test_matmul_of_two_computed_tensors_blocks():
    """x[1,4,6] -> A: MatMul(W[6,4]) = a;  MatMul(a, Transpose(a)) -> B: MatMul(W[4,3]) -> y
    A's features meet a computed right-hand side: blocked."""
    b = GraphBuilder(12)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 4), "M")])
    s = b.op("MatMul", [a, b.op("Transpose", [a], perm=[0, 2, 1])])
    y = b.op("MatMul", [s, b.const(b.randn(4, 3), "M")])
    model = _finish(b, y, x_shape=(1, 4, 6))
    reasons = [r for _, r in groups(model)]
    assert any(r and "sums over the channels of two computed tensors" in r for r in reasons), reasons
    assert all(r is not None for r in reasons)


def test_gemm_reading_channels_on_its_row_axis_blocks():
    """x[1,6] -> A: Gemm(6->4) -> B: Gemm(transA=1, A[1,4]^T -> [4,1] x W[1,3]) -> y
    B contracts over A's batch axis, so A's features cannot be removed."""
    b = GraphBuilder(13)
    a = b.gemm("x", 6, 4)
    y = b.op("Gemm", [a, b.const(b.randn(1, 3), "G")], transA=1)
    model = _finish(b, y, x_shape=(1, 6))
    assert_groups(model, [(4, "reads channels on its row axis"), (3, OUT)])
