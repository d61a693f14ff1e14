"""com.microsoft FusedConv (onnxprune/ops/fused_conv.py): a Conv with a fused activation and an optional sum
input Z tied to its output channels. Expected weights are sliced here with numpy from the plan's kept indices."""
from __future__ import annotations

import numpy as np
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, cut, kept, macs, name_of, port

MS = [("com.microsoft", 1)]


def declare(model, tensor: str, channels: int):
    """onnx shape inference does not know contrib ops: declare the FusedConv output's shape."""
    model.graph.value_info.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, channels, 8, 8]))
    return model


def fused(b: GraphBuilder, x: str, cin: int, cout: int, z: str | None = None) -> str:
    w = b.const(b.randn(cout, cin, 3, 3), "W")
    bias = b.const(b.randn(cout, scale=0.1), "B")
    inputs = [x, w, bias] + ([z] if z else [])
    return b.op("FusedConv", inputs, domain="com.microsoft", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                activation="Relu")


def test_fused_conv_prunes_like_a_conv():
    """x -> A: Conv(3->4) -> F: FusedConv(4->6, Relu) -> B: Conv(6->2) -> y      groups: A 4, F 6, B (output)"""
    b = GraphBuilder(3)
    a = b.conv("x", 3, 4)
    f = fused(b, a, 4, 6)
    y = b.conv(f, 6, 2)
    model = declare(_finish(b, y, extra_opsets=MS), f, 6)
    assert_groups(model, [(4, None), (6, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]), (f, 6, [1, 2, 5]))
    new, fn = result.model, name_of(f)
    np.testing.assert_array_equal(port(new, fn, 1), port(model, fn, 1)[[1, 2, 5]][:, [0, 3]])
    np.testing.assert_array_equal(port(new, fn, 2), port(model, fn, 2)[[1, 2, 5]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[:, [1, 2, 5]])
    assert macs(model, fn) == (6 * 8 * 8) * 4 * 9 and macs(new, fn) == (3 * 8 * 8) * 2 * 9


def test_fused_conv_sum_input_ties_its_channels():
    """x -> A: Conv(3->4) --------------------------+
          \\-> F: FusedConv(A -> 4, Z = A) -> B: Conv(4->2) -> y      (A and F are one group through Z)"""
    b = GraphBuilder(4)
    a = b.conv("x", 3, 4)
    f = fused(b, a, 4, 4, z=a)
    y = b.conv(f, 4, 2)
    model = declare(_finish(b, y, extra_opsets=MS), f, 4)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [1, 2]))
    assert kept(result, f) == [1, 2]
    np.testing.assert_array_equal(port(result.model, name_of(f), 1), port(model, name_of(f), 1)[[1, 2]][:, [1, 2]])
