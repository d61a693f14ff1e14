"""Quantized ops (onnxprune/ops/quantized.py): their channels are shown as blocked groups with the reason, never
cut; a float group elsewhere in the model is still pruned."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from opkit import cut, groups, port

import onnxprune


def _qlinear_conv() -> onnx.ModelProto:
    """xq[1,3,8,8] uint8 -> Q: QLinearConv(3->4, int8 weights) -> yq[1,4,8,8] uint8"""
    rng = np.random.default_rng(70)
    scalar = lambda name, v, dt: numpy_helper.from_array(np.array(v, dtype=dt), name)  # noqa: E731
    inits = [scalar("xs", 0.02, np.float32), scalar("xz", 128, np.uint8),
             numpy_helper.from_array(rng.integers(-20, 20, (4, 3, 3, 3)).astype(np.int8), "w"),
             scalar("ws", 0.01, np.float32), scalar("wz", 0, np.int8),
             scalar("ys", 0.05, np.float32), scalar("yz", 128, np.uint8)]
    q = helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="Q",
                         pads=[1, 1, 1, 1])
    graph = helper.make_graph([q], "q", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("yq", TensorProto.UINT8, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_qlinear_conv_output_is_a_blocked_group_with_the_reason():
    (size, reason), = groups(_qlinear_conv())
    assert size == 4
    assert "quantized op QLinearConv" in reason and "prune the float model" in reason


def test_pruning_a_quantized_model_changes_nothing():
    model = _qlinear_conv()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert not result.plan.tensors
    assert [list(t.dims) for t in result.model.graph.initializer] == [list(t.dims) for t in model.graph.initializer]


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
def test_integer_ops_block_the_float_group_they_read(op):
    """x -> B: Conv(3->4) -> Relu -> A: Conv(4->4, 1x1) -> Relu -> QuantizeLinear -> <op>(int weights) -> Cast -> y
    B's group: float all the way, prunable; A's: blocked (quantized after it); <op>'s output: blocked with the
    quantized reason"""
    rng = np.random.default_rng(71)
    w_shape = (4, 2) if op == "MatMulInteger" else (2, 4, 1, 1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "Wb"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "Wa"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(rng.integers(0, 255, w_shape).astype(np.uint8), "wi")]
    nodes = [helper.make_node("Conv", ["x", "Wb"], ["b"], name="B", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"], name="BR"),
             helper.make_node("Conv", ["br", "Wa"], ["a"], name="A"),
             helper.make_node("Relu", ["a"], ["ar"], name="AR"),
             helper.make_node("QuantizeLinear", ["ar", "s", "z"], ["aq"], name="QL")]
    if op == "MatMulInteger":
        nodes += [helper.make_node("Transpose", ["aq"], ["at"], name="T", perm=[0, 2, 3, 1]),
                  helper.make_node(op, ["at", "wi", "z", "z"], ["yi"], name="OP")]
        out_shape = [1, 8, 8, 2]
    else:
        nodes += [helper.make_node(op, ["aq", "wi", "z", "z"], ["yi"], name="OP")]
        out_shape = [1, 2, 8, 8]
    nodes.append(helper.make_node("Cast", ["yi"], ["y"], name="C", to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "qi", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    got = groups(model)
    assert len(got) == 3 and got[0] == (4, None)
    assert got[1][0] == 4 and got[1][1] is not None
    assert f"quantized op {op} (OP): prune the float model before quantizing" in got[2][1]
    result = cut(model, ("b", 4, [0, 3]))
    np.testing.assert_array_equal(port(result.model, "B", 1), port(model, "B", 1)[[0, 3]])
    np.testing.assert_array_equal(port(result.model, "A", 1), port(model, "A", 1)[:, [0, 3]])
    np.testing.assert_array_equal(port(result.model, "OP", 1), port(model, "OP", 1))
