"""Normalisation handlers (onnxprune/ops/norm.py): per-channel parameters follow the channels; layers whose
statistics mix the channels block them, except LayerNorm/GroupNorm, which are rewritten to stay exact."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, _finish
from conftest import run_ort
from onnx import TensorProto, helper, numpy_helper
from opkit import OUT, assert_groups, cut, groups, kept, name_of, plan, port

import onnxprune


def _norm_chain(op: str, n_params: int, seed: int = 20, **attrs):
    """x -> A: Conv(3->4) -> <op>(params[4] x n_params) -> Relu -> B: Conv(4->2) -> y"""
    b = GraphBuilder(seed)
    a = b.conv("x", 3, 4)
    params = [b.const(b.rng.uniform(0.5, 1.5, 4).astype(np.float32), "p") for _ in range(n_params)]
    n = b.op(op, [a, *params], **attrs)
    y = b.conv(b.relu(n), 4, 2)
    return _finish(b, y), a, n


@pytest.mark.parametrize("op,n_params", [("BatchNormalization", 4), ("InstanceNormalization", 2)])
def test_per_channel_norm_parameters_follow(op, n_params):
    model, a, n = _norm_chain(op, n_params, epsilon=1e-5)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]))
    assert kept(result, n) == [0, 3]
    for k in range(1, n_params + 1):
        np.testing.assert_array_equal(port(result.model, name_of(n), k), port(model, name_of(n), k)[[0, 3]])


def test_batch_norm_in_training_mode_blocks():
    """BN with its running-mean output used (training mode): x -> Conv(3->4) -> BN(+mean out) -> ..."""
    model, _, _ = _norm_chain("BatchNormalization", 4)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["running_mean", "running_var"])
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    model.graph.output.append(helper.make_tensor_value_info("running_mean", TensorProto.FLOAT, [4]))
    (size, reason), _ = groups(model)
    assert size == 4 and reason is not None and "training mode" in reason


def _layer_norm_last(seed: int = 21):
    """x -> A: Conv(3->4) -> Transpose(NHWC) -> LayerNorm(axis=-1, over the 4 channels) -> B: MatMul(4->2) -> y"""
    b = GraphBuilder(seed)
    a = b.conv("x", 3, 4)
    t = b.op("Transpose", [a], perm=[0, 2, 3, 1])
    ln = b.op("LayerNormalization", [t, b.const(b.rng.uniform(0.5, 1.5, 4).astype(np.float32), "s"),
                                     b.const(b.randn(4), "b")], axis=-1, epsilon=1e-5)
    y = b.op("MatMul", [ln, b.const(b.randn(4, 2), "M")])
    return _finish(b, y), a, t, ln, y


def test_layer_norm_over_the_channel_axis_stays_exact():
    """The masked original divides by 4 channels; the pruned model must too (the oracle in cut() checks it)."""
    model, a, t, ln, y = _layer_norm_last()
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [1, 2]))
    assert kept(result, t) == [1, 2] and kept(result, ln) == [1, 2]
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[[1, 2]])
    # and it is not what a plain LayerNorm over the 2 kept channels computes (that would divide by 2)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    naive = run_ort(_plain_ln_pruned(model, [1, 2]), {"x": x})[0]
    assert not np.allclose(run_ort(result.model, {"x": x})[0], naive, atol=1e-3)


def _plain_ln_pruned(model: onnx.ModelProto, keep: list[int]) -> onnx.ModelProto:
    """The naive cut: slice Conv A, LayerNorm's scale/bias and MatMul rows, keep LayerNorm as it is."""
    naive = onnx.ModelProto()
    naive.CopyFrom(model)
    g = naive.graph
    conv = next(n for n in g.node if n.op_type == "Conv")
    lnorm = next(n for n in g.node if n.op_type == "LayerNormalization")
    mm = next(n for n in g.node if n.op_type == "MatMul")
    for t in g.initializer:
        if t.name in (conv.input[1], conv.input[2], lnorm.input[1], lnorm.input[2], mm.input[1]):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[keep], t.name))
    del g.value_info[:]
    return naive


def test_layer_norm_over_channels_and_space_blocks():
    """x -> Conv(3->4) -> LayerNorm(axis=1: C, H, W) -> Conv(4->2) -> y"""
    b = GraphBuilder(22)
    a = b.conv("x", 3, 4)
    ln = b.op("LayerNormalization", [a, b.const(np.ones((4, 8, 8), np.float32), "s")], axis=1)
    model = _finish(b, b.conv(ln, 4, 2))
    assert_groups(model, [(4, "mixes the channels"), (2, OUT)])


def test_layer_norm_over_width_passes_and_keeps_its_parameters():
    """x -> A: Conv(3->4) -> LayerNorm(axis=-1: W only, scale[8]) -> B: Conv(4->2) -> y"""
    b = GraphBuilder(23)
    a = b.conv("x", 3, 4)
    ln = b.op("LayerNormalization", [a, b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "s")], axis=-1)
    y = b.conv(ln, 4, 2)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 1, 3]))
    np.testing.assert_array_equal(port(result.model, name_of(ln), 1), port(model, name_of(ln), 1))
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 1, 3]])


@pytest.mark.parametrize("op,attrs,reason", [
    ("LRN", {"size": 3}, "mixes the channels"),
    ("LpNormalization", {"axis": 1}, "mixes the channels"),
    ("MeanVarianceNormalization", {"axes": [1, 2, 3]}, "mixes the channels"),
    ("MeanVarianceNormalization", {"axes": [0, 2, 3]}, None),  # the default axes: per channel
    ("LpNormalization", {"axis": -1}, None),
])
def test_axis_norms(op, attrs, reason):
    """x -> Conv(3->4) -> <op> -> Conv(4->2) -> y"""
    b = GraphBuilder(24)
    a = b.conv("x", 3, 4)
    n = b.op(op, [a], **attrs)
    model = _finish(b, b.conv(n, 4, 2))
    assert_groups(model, [(4, reason), (2, OUT)])
    if reason is None:
        if op == "MeanVarianceNormalization":
            # onnxruntime's MVN turns an all-zero (masked) channel into NaN, so the mask oracle cannot judge it
            result = onnxprune.apply_plan(model, plan((a, 4, [1, 2])))
            assert result.verification is not None  # checker, run and interface passed
        else:
            result = cut(model, (a, 4, [1, 2]))
        assert kept(result, n) == [1, 2]


def _group_norm():
    """x[1,3,4,4] -> A: Conv(3->8, 1x1) -> GN: GroupNorm(2 groups of 4, opset 21) -> B: Conv(8->2) -> y"""
    rng = np.random.default_rng(25)
    n_par = 8
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("Wa", (8, 3, 1, 1)), ("Wb", (2, 8, 1, 1)), ("gs", (n_par,)), ("gb", (n_par,))]]
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"], name="A"),
             helper.make_node("GroupNormalization", ["a", "gs", "gb"], ["n"], name="GN", num_groups=2),
             helper.make_node("Conv", ["n", "Wb"], ["y"], name="B")]
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits,
                              value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 4, 4])
                                          for n in ("a", "n")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def test_group_norm_keeps_equal_counts_per_group_and_stays_exact():
    model = _group_norm()
    assert_groups(model, [(8, None), (2, OUT)])
    cells = onnxprune.analyze(model).groups[0].cells
    np.testing.assert_array_equal(np.sort(cells, axis=1), [[0, 1, 2, 3], [4, 5, 6, 7]])
    result = cut(model, ("a", 8, [0, 2, 5, 6]))
    np.testing.assert_array_equal(port(result.model, "B", 1), port(model, "B", 1)[:, [0, 2, 5, 6]])
    with pytest.raises(onnxprune.PlanError, match="unevenly"):
        onnxprune.apply_plan(model, plan(("a", 8, [0, 1, 2, 5])))


def test_rms_normalization_over_the_hidden_width_stays_exact():
    """x[1,5,6] -> A: MatMul(6->4) -> RMSNormalization (opset 23, over the 4 features) -> B: MatMul(4->2) -> y
    the mean square keeps dividing by 4 (epsilon and scale rescaled, the node kept); a hidden-width group of a
    transformer"""
    b = GraphBuilder(24)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 4), "W")])
    rms = b.op("RMSNormalization", [a, b.const(b.rng.uniform(0.5, 1.5, 4).astype(np.float32), "s")], axis=-1,
               epsilon=1e-5)
    y = b.op("MatMul", [rms, b.const(b.randn(4, 2), "M")])
    probe = b.model((1, 5, 6), y, (1, 5, 2))
    probe.opset_import[0].version = 23
    probe.ir_version = 10
    onnx.checker.check_model(probe, full_check=True)
    assert [g.kind for g in onnxprune.analyze(probe).groups] == ["hidden", "mlp"]
    result = cut(probe, (a, 4, [0, 3], 2))
    fused = next(n for n in result.model.graph.node if n.op_type == "RMSNormalization")  # kept, exact:
    assert next(a.f for a in fused.attribute if a.name == "epsilon") == pytest.approx(1e-5 * 4 / 2)  # eps C/K
    np.testing.assert_allclose(port(result.model, fused.name, 1), port(probe, fused.name, 1)[[0, 3]] * np.sqrt(2),
                               rtol=1e-6)  # scale sqrt(C/K)
    assert kept(result, rms) == [0, 3]


def test_onnxruntime_simplified_layer_normalization_in_the_default_domain():
    """x[1,5,6] -> A: MatMul(6->4) -> SimplifiedLayerNormalization (onnxruntime's RMSNorm, written by its
    transformer optimizer in the default domain, which onnx's checker does not know) -> B: MatMul(4->2) -> y:
    accepted, checked in full around a stand-in for that node, the hidden width cut exactly with the node kept"""
    from onnxprune.core.graph import checker_view

    b = GraphBuilder(25)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 4), "W")])
    rms = b.op("SimplifiedLayerNormalization", [a, b.const(b.rng.uniform(0.5, 1.5, 4).astype(np.float32), "s")],
               axis=-1, epsilon=1e-5, stash_type=1)
    y = b.op("MatMul", [rms, b.const(b.randn(4, 2), "M")])
    model = b.model((1, 5, 6), y, (1, 5, 2))
    with pytest.raises(onnx.checker.ValidationError, match="SimplifiedLayerNormalization"):
        onnx.checker.check_model(model)
    onnx.checker.check_model(checker_view(model, light=False), full_check=True)
    assert [g.kind for g in onnxprune.analyze(model).groups] == ["hidden", "mlp"]
    result = cut(model, (a, 4, [1, 2], 2))
    fused = next(n for n in result.model.graph.node if n.op_type == "SimplifiedLayerNormalization")
    assert next(a.f for a in fused.attribute if a.name == "epsilon") == pytest.approx(1e-5 * 4 / 2)
    assert kept(result, rms) == [1, 2]
