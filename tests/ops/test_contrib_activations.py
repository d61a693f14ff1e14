"""com.microsoft Gelu, QuickGelu, FastGelu, BiasGelu and BiasAdd (onnxprune/ops/contrib_activations.py): the MLP
width passes through them, a constant bias [hidden] is sliced with the channels. Expected weights are sliced here
with numpy from the plan's kept indices; expected MACs are written out by hand."""
from __future__ import annotations

import numpy as np
import onnx
import opkit
import pytest
from builders import GraphBuilder, _finish
from conftest import assert_mask_equivalent
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, attrs, cut, kept, macs, name_of, node, plan, port

import onnxprune

MS = [("com.microsoft", 1)]
S, K, H, K2 = 5, 4, 8, 3  # sequence, model width, MLP width, output width
KEEP = [1, 4, 6]


def finish(b: GraphBuilder, y: str) -> onnx.ModelProto:
    """The model with x[1,S,K] and y[1,S,K2] (inference stops at the contrib op, so y's shape is written here)."""
    model = _finish(b, y, x_shape=(1, S, K), extra_opsets=MS)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, K2]))
    return model


def mlp(op: str, bias: str | None = "const", seed: int = 0, **attrs) -> tuple[onnx.ModelProto, str, str, str]:
    """x[1,S,K] -> M1: MatMul(K->H) -> op(bias[H]?) -> M2: MatMul(H->K2) -> y.  Returns (model, M1's output, the
    activation's output, y); ``bias``: "const" (initializer), "input" (a graph input), None (no bias)."""
    b = GraphBuilder(seed)
    h = b.op("MatMul", ["x", b.const(b.randn(K, H), "M")])
    inputs = [h]
    if bias == "const":
        inputs.append(b.const(b.randn(H, scale=0.3), "bias"))
    elif bias == "input":
        inputs.append("bias_in")
    a = b.op(op, inputs, domain="com.microsoft", **attrs)
    y = b.op("MatMul", [a, b.const(b.randn(H, K2), "M")])
    model = finish(b, y)
    if bias == "input":
        model.graph.input.append(helper.make_tensor_value_info("bias_in", TensorProto.FLOAT, [H]))
    return model, h, a, y


CASES = [
    ("BiasGelu", "const", {}),
    ("FastGelu", "const", {}),
    ("FastGelu", None, {}),
    ("Gelu", None, {}),
    ("QuickGelu", None, {"alpha": 1.702}),
]


@pytest.mark.parametrize("op,bias,extra", CASES, ids=[f"{c[0]}-{c[1] or 'nobias'}" for c in CASES])
@pytest.mark.parametrize("declared", [True, False], ids=["value_info", "no_value_info"])
def test_mlp_width_prunes_through_the_activation(op, bias, extra, declared):
    """x -> M1: MatMul(4->8) -> op -> M2: MatMul(8->3) -> y      groups: the MLP width 8, y (output)

    Without value_info for the contrib output, the handler's output_rank ("same") gives M2 its input rank; the
    library's verification runs on the bare graph, the mask oracle of conftest on its declared twin."""
    model, h, a, y = mlp(op, bias, **extra)
    full = opkit.declared(model, {a: H}, lead=(1, S))
    if declared:
        model = full
    assert_groups(model, [(H, None), (K2, OUT)])
    if declared:
        result = cut(model, (h, H, KEEP, 2))
    else:  # the mask oracle needs every plan tensor's rank: it reads the declared twin of the same graph
        result = onnxprune.apply_plan(model, plan((h, H, KEEP, 2)))
        onnx.checker.check_model(result.model, full_check=True)
        assert result.verification is not None and result.verification.mask_equivalent is True
        assert_mask_equivalent(full, result.model, result.plan)
    new, m1, m2, act = result.model, name_of(h), name_of(y), name_of(a)
    assert kept(result, a) == KEEP
    np.testing.assert_array_equal(port(new, m1, 1), port(model, m1, 1)[:, KEEP])
    np.testing.assert_array_equal(port(new, m2, 1), port(model, m2, 1)[KEEP, :])
    if bias == "const":
        np.testing.assert_array_equal(port(new, act, 1), port(model, act, 1)[KEEP])
    else:
        assert len(node(new, act).input) == 1
    assert attrs(node(new, act)) == attrs(node(model, act))
    assert macs(model, m1) == S * K * H and macs(new, m1) == S * K * len(KEEP)
    assert macs(model, m2) == S * H * K2 and macs(new, m2) == S * len(KEEP) * K2
    assert macs(model, act) == 0


def test_non_constant_bias_blocks_with_the_reason():
    """x -> M1 -> BiasGelu(bias = graph input) -> M2 -> y: the MLP group is blocked, naming the bias."""
    model, _, a, _ = mlp("BiasGelu", "input")
    model = opkit.declared(model, {a: H}, lead=(1, S))
    assert_groups(model, [(H, "adds a non-constant bias ('bias_in')"), (K2, OUT)])


def test_channels_off_the_bias_axis_block():
    """Channels on axis 1 of a [1,8,S] tensor (a Transpose before FastGelu) cannot take a bias over the last axis:
    x[1,S,K] -> M1(K->8) -> Transpose(0,2,1) [1,8,S] -> FastGelu(bias[S]) -> Transpose back -> M2 -> y."""
    b = GraphBuilder(1)
    h = b.op("MatMul", ["x", b.const(b.randn(K, H), "M")])
    t = b.op("Transpose", [h], perm=[0, 2, 1])
    a = b.op("FastGelu", [t, b.const(b.randn(S, scale=0.3), "bias")], domain="com.microsoft")
    t2 = b.op("Transpose", [a], perm=[0, 2, 1])
    y = b.op("MatMul", [t2, b.const(b.randn(H, K2), "M")])
    model = finish(b, y)
    model.graph.value_info.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, [1, H, S]))
    assert_groups(model, [(H, "adds its bias along the last axis, but the channels lie on axis 1"), (K2, OUT)])


def test_bias_add_ties_input_and_skip():
    """x -> A: MatMul(4->8), Sk: MatMul(4->8) -> BiasAdd(A, bias[8], Sk) -> M2: MatMul(8->3) -> y

    A and Sk are one group; the bias is sliced. onnxruntime has no CPU kernel for BiasAdd, so the result is
    checked here with numpy: the pruned graph computed by hand equals the original with the cut channels masked."""
    b = GraphBuilder(2)
    wa, ws, w2 = b.randn(K, H), b.randn(K, H), b.randn(H, K2)
    bias = b.randn(H, scale=0.3)
    h = b.op("MatMul", ["x", b.const(wa, "M")])
    s = b.op("MatMul", ["x", b.const(ws, "M")])
    a = b.op("BiasAdd", [h, b.const(bias, "bias"), s], domain="com.microsoft")
    y = b.op("MatMul", [a, b.const(w2, "M")])
    model = finish(b, y)
    assert_groups(model, [(H, None), (K2, OUT)])
    result = onnxprune.apply_plan(model, plan((h, H, KEEP, 2)), verify_result=False)
    new = result.model
    assert kept(result, s) == KEEP and kept(result, a) == KEEP
    np.testing.assert_array_equal(port(new, name_of(h), 1), wa[:, KEEP])
    np.testing.assert_array_equal(port(new, name_of(s), 1), ws[:, KEEP])
    np.testing.assert_array_equal(port(new, name_of(a), 1), bias[KEEP])
    np.testing.assert_array_equal(port(new, name_of(y), 1), w2[KEEP])
    x = np.random.default_rng(0).standard_normal((1, S, K)).astype(np.float32)
    mask = np.zeros(H, np.float32)
    mask[KEEP] = 1
    masked = ((x @ wa + bias + x @ ws) * mask) @ w2
    pruned = (x @ port(new, name_of(h), 1) + port(new, name_of(a), 1) + x @ port(new, name_of(s), 1)) \
        @ port(new, name_of(y), 1)
    np.testing.assert_allclose(pruned, masked, rtol=1e-5, atol=1e-5)


def test_bias_add_with_a_fixed_skip_blocks():
    """BiasAdd(MatMul(x), bias, skip = graph input): the skip's channels are fixed, the group is blocked."""
    b = GraphBuilder(3)
    h = b.op("MatMul", ["x", b.const(b.randn(K, H), "M")])
    a = b.op("BiasAdd", [h, b.const(b.randn(H), "bias"), "skip"], domain="com.microsoft")
    y = b.op("MatMul", [a, b.const(b.randn(H, K2), "M")])
    model = finish(b, y)
    model.graph.input.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, S, H]))
    assert_groups(model, [(H, "adds the channels to a fixed operand ('skip')"), (K2, OUT)])



def test_bias_shared_by_two_groups_is_sliced_per_node():
    """The optimizer deduplicates equal initializers (whisper's fused graph shares one fc1 bias between layers):
    x -> M1(4->8) -> BiasGelu(b) -> M2(8->8) -> BiasGelu(b) -> M3(8->3) -> y, two groups of 8 cut differently."""
    b = GraphBuilder(5)
    bias = b.const(b.randn(H), "bias")
    h = b.op("MatMul", ["x", b.const(b.randn(K, H), "M")])
    a = b.op("BiasGelu", [h, bias], domain="com.microsoft")
    h2 = b.op("MatMul", [a, b.const(b.randn(H, H), "M")])
    a2 = b.op("BiasGelu", [h2, bias], domain="com.microsoft")
    y = b.op("MatMul", [a2, b.const(b.randn(H, K2), "M")])
    model = finish(b, y)
    model = opkit.declared(model, {a: H, h2: H, a2: H}, lead=(1, S))  # the whole chain past the contrib op
    assert_groups(model, [(H, None), (H, None), (K2, OUT)])
    second = [0, 2, 3, 7]
    result = cut(model, (h, H, KEEP, 2), (h2, H, second, 2))
    full = port(model, name_of(a), 1)
    np.testing.assert_array_equal(port(result.model, name_of(a), 1), full[KEEP])
    np.testing.assert_array_equal(port(result.model, name_of(a2), 1), full[second])
    np.testing.assert_array_equal(port(result.model, name_of(h2), 1), port(model, name_of(h2), 1)[KEEP][:, second])
