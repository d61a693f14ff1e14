"""com.microsoft SkipLayerNormalization / SkipSimplifiedLayerNormalization (onnxprune/ops/contrib_norms.py): input
and skip are tied and the hidden width they normalise is cut exactly (SkipLayerNorm written out, dividing by the
original width; the RMS form kept fused with a rescaled epsilon and gamma); a fixed skip blocks; a MatMul reading
them (no value_info: onnx shape inference does not know contrib ops) still starts a prunable group, because the
handler gives their outputs' rank."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, cut, declared, macs, name_of, port

MS = [("com.microsoft", 1)]


def mlp_after_skip_norm(op: str):
    """x[1,5,4] -> A: MatMul(4->4) -> SkipNorm(A, skip = x) -> B: MatMul(4->8) -> Relu -> C: MatMul(8->3) -> y
    groups: A's 4 (blocked: normalised), B's 8 (prunable), C's 3 (graph output)"""
    b = GraphBuilder(7)
    a = b.op("MatMul", ["x", b.const(b.randn(4, 4), "W")])
    gamma = b.const(np.abs(b.randn(4)) + 0.5, "g")
    inputs = [a, "x", gamma] + ([b.const(b.randn(4, scale=0.1), "beta")] if op == "SkipLayerNormalization" else [])
    norm = b.op(op, inputs, domain="com.microsoft", epsilon=1e-5)
    up = b.op("MatMul", [norm, b.const(b.randn(4, 8), "W")])
    act = b.relu(up)
    y = b.op("MatMul", [act, b.const(b.randn(8, 3), "W")])
    return _finish(b, y, x_shape=(1, 5, 4), extra_opsets=MS), {norm: 4, up: 8, act: 8}, up, y


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_norm_with_a_fixed_skip_blocks_and_lets_the_mlp_prune(op):
    model, widths, up, y = mlp_after_skip_norm(op)
    assert_groups(model, [(4, "adds the channels to a fixed operand"), (8, None), (3, OUT)])  # no value_info
    result = cut(declared(model, widths), (up, 8, [0, 3, 5, 6], 2))
    new = result.model
    np.testing.assert_array_equal(port(new, name_of(up), 1), port(model, name_of(up), 1)[:, [0, 3, 5, 6]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[[0, 3, 5, 6]])
    assert macs(model, name_of(up)) == 5 * 8 * 4 and macs(new, name_of(up)) == 5 * 4 * 4


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_norm_cuts_the_hidden_width_exactly(op):
    """x[1,5,4] -> A: MatMul(4->6), S: MatMul(4->6) -> SkipNorm(A, S, gamma, beta?, bias) -> (y0, sum)
    -> B: MatMul(6->3) of y0 + C: MatMul(6->3) of the sum -> y      groups: A+S tied (6), the output's 3"""
    b = GraphBuilder(8)
    a = b.op("MatMul", ["x", b.const(b.randn(4, 6), "W")])
    skip = b.op("MatMul", ["x", b.const(b.randn(4, 6), "W")])
    params = [b.const(np.abs(b.randn(6)) + 0.5, "g")]
    if op == "SkipLayerNormalization":
        params.append(b.const(b.randn(6, scale=0.1), "beta"))
    params.append(b.const(b.randn(6, scale=0.3), "bias"))
    norm, _, _, total = b.op(op, [a, skip, *params], n_out=4, domain="com.microsoft", epsilon=1e-5)
    b.nodes[-1].output[1] = b.nodes[-1].output[2] = ""
    y = b.op("Add", [b.op("MatMul", [norm, b.const(b.randn(6, 3), "W")]),
                     b.op("MatMul", [total, b.const(b.randn(6, 3), "W")])])
    model = declared(_finish(b, y, x_shape=(1, 5, 4), extra_opsets=MS), {norm: 6, total: 6})
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 3]))
    assert_groups(model, [(6, None), (3, OUT)])
    result = cut(model, (a, 6, [0, 2, 5], 2))
    ops = [n.op_type for n in result.model.graph.node]
    if op == "SkipLayerNormalization":  # written out: the mean and variance over the original 6
        assert op not in ops and ops.count("ReduceSum") == 2
    else:  # the fused RMS node stays: epsilon' = (C eps + sum of the removed bias values squared) / K
        fused = next(n for n in result.model.graph.node if n.op_type == op)
        removed = port(model, fused.name, 3)[[1, 3, 4]].astype(np.float64)
        epsilon = next(a.f for a in fused.attribute if a.name == "epsilon")
        assert "ReduceSum" not in ops
        assert epsilon == pytest.approx((6 * 1e-5 + np.square(removed).sum()) / 3, rel=1e-6)
        np.testing.assert_allclose(port(result.model, fused.name, 2),
                                   port(model, fused.name, 2)[[0, 2, 5]] * np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_array_equal(port(result.model, name_of(skip), 1), port(model, name_of(skip), 1)[:, [0, 2, 5]])


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_shape_inference_goes_on_past_skip_norms(op):
    from onnxprune.core.graph import Graph

    model, widths, up, y = mlp_after_skip_norm(op)
    graph = Graph.build(model)
    assert all(graph.shape(name) == (1, 5, width) for name, width in widths.items())
