"""Conv and ConvTranspose handlers (onnxprune/ops/conv.py): plain, depthwise, grouped, transposed, 1-D, and
refusals. Expected weights are sliced here with numpy from the plan's kept indices."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, attrs, cut, kept, macs, name_of, node, plan, port

import onnxprune


def conv_chain():
    """x[1,3,8,8] -> A: Conv(3->4, 3x3) -> Relu -> B: Conv(4->2, 3x3) -> y
                     \\______ group 4 ______/      group 2 (blocked: graph output)
    """
    b = GraphBuilder(1)
    a = b.conv("x", 3, 4)
    r = b.relu(a)
    y = b.conv(r, 4, 2)
    return _finish(b, y), name_of(a), name_of(y), a, r


def test_plain_conv_groups_weights_and_macs():
    model, a, last, a_out, r_out = conv_chain()
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a_out, 4, [1, 3]))
    assert kept(result, a_out) == [1, 3] and kept(result, r_out) == [1, 3]  # the group follows through Relu
    new = result.model
    np.testing.assert_array_equal(port(new, a, 1), port(model, a, 1)[[1, 3]])
    np.testing.assert_array_equal(port(new, a, 2), port(model, a, 2)[[1, 3]])
    np.testing.assert_array_equal(port(new, last, 1), port(model, last, 1)[:, [1, 3]])
    np.testing.assert_array_equal(port(new, last, 2), port(model, last, 2))  # the blocked group is untouched
    # Conv MACs: output elements x (C_in / group) x kh x kw
    assert macs(model, a) == (4 * 8 * 8) * 3 * 9 and macs(new, a) == (2 * 8 * 8) * 3 * 9
    assert macs(model, last) == (2 * 8 * 8) * 4 * 9 and macs(new, last) == (2 * 8 * 8) * 2 * 9


def test_depthwise_conv_shrinks_with_its_input_and_rewrites_group():
    """x -> A: Conv(3->4) -> DW: Conv(4->4, group=4) -> Relu -> B: Conv(4->2) -> y    (one group: A and DW)"""
    b = GraphBuilder(2)
    a = b.conv("x", 3, 4)
    dw = b.conv(a, 4, 4, group=4)
    y = b.conv(b.relu(dw), 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 2, 3]))
    assert kept(result, dw) == [0, 2, 3]
    new, d = result.model, name_of(dw)
    assert attrs(node(new, d))["group"] == 3
    np.testing.assert_array_equal(port(new, d, 1), port(model, d, 1)[[0, 2, 3]])
    np.testing.assert_array_equal(port(new, d, 2), port(model, d, 2)[[0, 2, 3]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 2, 3]])
    assert macs(new, d) == (3 * 8 * 8) * 1 * 9


def test_depthwise_multiplier_removes_a_channel_with_its_filters():
    """x -> A: Conv(3->2) -> DW: Conv(2->4, group=2, multiplier 2) -> Relu -> B: Conv(4->2) -> y
    One group of 2 units: removing A's channel 1 removes DW filters 2 and 3."""
    b = GraphBuilder(3)
    a = b.conv("x", 3, 2)
    dw = b.conv(a, 2, 4, group=2)
    y = b.conv(b.relu(dw), 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(2, None), (2, OUT)])
    result = cut(model, (a, 2, [0]))
    assert kept(result, dw) == [0, 1]
    new, d = result.model, name_of(dw)
    assert attrs(node(new, d))["group"] == 1
    np.testing.assert_array_equal(port(new, d, 1), port(model, d, 1)[[0, 1]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 1]])


def grouped():
    """x -> A: Conv(3->8) -> G: Conv(8->4, group=2) -> Relu -> B: Conv(4->2) -> y
    A's channels form cells [0..3] | [4..7] (one per conv group); G's filters cells [0,1] | [2,3]."""
    b = GraphBuilder(4)
    a = b.conv("x", 3, 8)
    g = b.conv(a, 8, 4, group=2)
    y = b.conv(b.relu(g), 4, 2)
    return _finish(b, y), a, g, y


def test_grouped_conv_slices_each_group_with_its_own_kept_inputs():
    model, a, g, y = grouped()
    assert_groups(model, [(8, None), (4, None), (2, OUT)])
    cells = [grp.cells for grp in onnxprune.analyze(model).groups]
    np.testing.assert_array_equal(np.sort(cells[0], axis=1), [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(np.sort(cells[1], axis=1), [[0, 1], [2, 3]])
    result = cut(model, (a, 8, [0, 1, 4, 6]), (g, 4, [1, 3]))
    new, gn = result.model, name_of(g)
    w = port(model, gn, 1)  # [4 filters, 4 inputs per group, 3, 3]
    want = np.stack([w[1][[0, 1]], w[3][[0, 2]]])  # filter 1 (group 0) and filter 3 (group 1, inputs 4, 6)
    np.testing.assert_array_equal(port(new, gn, 1), want)
    np.testing.assert_array_equal(port(new, gn, 2), port(model, gn, 2)[[1, 3]])
    assert attrs(node(new, gn))["group"] == 2
    assert macs(new, gn) == (2 * 8 * 8) * 2 * 9


def test_grouped_conv_refuses_an_uneven_cut():
    model, a, _, _ = grouped()
    with pytest.raises(onnxprune.PlanError, match="unevenly"):
        onnxprune.apply_plan(model, plan((a, 8, [0, 1, 2, 4])))


def test_conv_transpose_weight_axes():
    """x -> A: Conv(3->4) -> T: ConvTranspose(4->3, W[4,3,2,2], stride 2) -> Relu -> B: Conv(3->2) -> y
    T reads A's channels on weight axis 0 and creates its own on axis 1."""
    b = GraphBuilder(5)
    a = b.conv("x", 3, 4)
    w = b.const(b.randn(4, 3, 2, 2), "T")
    t = b.op("ConvTranspose", [a, w, b.const(b.randn(3), "Tb")], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(b.relu(t), 3, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, None), (2, OUT)])
    tn = name_of(t)
    # ConvTranspose MACs: input elements x (C_out / group) x kh x kw
    assert macs(model, tn) == (4 * 8 * 8) * 3 * 4
    result = cut(model, (a, 4, [0, 3]), (t, 3, [1, 2]))
    new = result.model
    np.testing.assert_array_equal(port(new, tn, 1), port(model, tn, 1)[[0, 3]][:, [1, 2]])
    np.testing.assert_array_equal(port(new, tn, 2), port(model, tn, 2)[[1, 2]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[:, [1, 2]])
    assert macs(new, tn) == (2 * 8 * 8) * 2 * 4


def test_conv1d():
    """x[1,3,16] -> A: Conv1d(3->4, k3) -> Relu -> B: Conv1d(4->2) -> y"""
    b = GraphBuilder(6)
    a = b.conv("x", 3, 4, dims=1)
    y = b.conv(b.relu(a), 4, 2, dims=1)
    model = _finish(b, y, x_shape=(1, 3, 16))
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [2]))
    np.testing.assert_array_equal(port(result.model, name_of(a), 1), port(model, name_of(a), 1)[[2]])
    assert macs(result.model, name_of(y)) == (2 * 16) * 1 * 3


def test_conv_with_computed_weights_blocks_its_input():
    """x -> A: Conv(3->4) -> Relu -> C: Conv(W = Relu(Wc), computed) -> y
    A's group is blocked (C cannot follow it) and C's output is shown blocked too."""
    b = GraphBuilder(7)
    a = b.relu(b.conv("x", 3, 4))
    wc = b.op("Relu", [b.const(b.randn(2, 4, 3, 3), "Wc")])
    b.nodes.append(helper.make_node("Conv", [a, wc], ["y"], name="computed", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert_groups(model, [(4, "non-constant weights"), (2, "non-constant weights")])
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert not result.plan.tensors
