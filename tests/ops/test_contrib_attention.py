"""com.microsoft Attention (onnxprune/ops/contrib_attention.py): its heads are units (head_dim columns of each of
Q, K and V in the packed weight, num_heads lowered); the hidden width it reads is blocked; a KV cache keeps the
heads; the MLP after it prunes even without value_info, because the handler gives the output's rank."""
from __future__ import annotations

import numpy as np
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, attrs, cut, declared, macs, name_of, port

MS = [("com.microsoft", 1)]


def mlp_after_attention():
    """x[1,5,8] -> A: MatMul(8->8) -> Attention(2 heads, packed QKV [8,24]) -> B: MatMul(8->16) -> Relu
    -> C: MatMul(16->3) -> y
    groups: A's 8 (the packed weight's rows), the 2 heads, B's 16, C's 3 (output)"""
    b = GraphBuilder(11)
    a = b.op("MatMul", ["x", b.const(b.randn(8, 8), "W")])
    att = b.op("Attention", [a, b.const(b.randn(8, 24), "Wqkv"), b.const(b.randn(24, scale=0.1), "Bqkv")],
               domain="com.microsoft", num_heads=2)
    up = b.op("MatMul", [att, b.const(b.randn(8, 16), "W")])
    act = b.relu(up)
    y = b.op("MatMul", [act, b.const(b.randn(16, 3), "W")])
    return _finish(b, y, x_shape=(1, 5, 8), extra_opsets=MS), {att: 8, up: 16, act: 16}, up, y


def test_the_mlp_after_attention_prunes():
    model, widths, up, y = mlp_after_attention()
    assert_groups(model, [(8, None), (2, None), (16, None), (3, OUT)])  # no value_info
    result = cut(declared(model, widths), (up, 16, [1, 2, 7, 8, 9, 15], 2))
    new = result.model
    np.testing.assert_array_equal(port(new, name_of(up), 1), port(model, name_of(up), 1)[:, [1, 2, 7, 8, 9, 15]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[[1, 2, 7, 8, 9, 15]])
    assert macs(model, name_of(up)) == 5 * 16 * 8 and macs(new, name_of(up)) == 5 * 6 * 8


def test_attention_heads_cut_the_packed_weight_and_num_heads():
    model, widths, up, _ = mlp_after_attention()
    att = next(n for n in model.graph.node if n.op_type == "Attention")
    result = cut(declared(model, widths), (att.output[0], 8, [4, 5, 6, 7], 2))  # keep head 1
    new = next(n for n in result.model.graph.node if n.op_type == "Attention")
    assert attrs(new)["num_heads"] == 1
    columns = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # head 1 of Q, of K, of V
    np.testing.assert_array_equal(port(result.model, new.name, 1), port(model, att.name, 1)[:, columns])
    np.testing.assert_array_equal(port(result.model, new.name, 2), port(model, att.name, 2)[columns])
    np.testing.assert_array_equal(port(result.model, name_of(up), 1), port(model, name_of(up), 1)[4:])
    x_macs = 5 * 8 * 24 + 2 * 5 * 5 * 8  # projection + Q K^T and P V
    assert macs(model, att.name) == x_macs and macs(result.model, new.name) == x_macs // 2


def test_attention_with_a_kv_cache_keeps_its_heads():
    """Attention(x, W, b, mask="", past) -> (y, present): heads stay, with the reason."""  # noqa: D401
    b = GraphBuilder(12)
    past = b.const(np.zeros((2, 1, 2, 0, 4), dtype=np.float32), "past")  # [2, batch, heads, 0, head_dim]
    att, present = b.op("Attention", ["x", b.const(b.randn(8, 24), "Wqkv"), b.const(b.randn(24), "Bqkv"), "",
                                      past], n_out=2, domain="com.microsoft", num_heads=2)
    y = b.op("MatMul", [att, b.const(b.randn(8, 3), "W")])
    model = _finish(b, y, x_shape=(1, 5, 8), extra_opsets=MS)
    assert_groups(model, [(2, "has a KV cache"), (3, OUT)])


def test_attention_hidden_width_is_the_packed_weights_rows():
    model, widths, _, _ = mlp_after_attention()
    a = next(n for n in model.graph.node if n.op_type == "MatMul")
    att = next(n for n in model.graph.node if n.op_type == "Attention")
    result = cut(declared(model, widths), (a.output[0], 8, [0, 3, 6], 2))
    new = next(n for n in result.model.graph.node if n.op_type == "Attention")
    np.testing.assert_array_equal(port(result.model, new.name, 1), port(model, att.name, 1)[[0, 3, 6]])
    assert attrs(new)["num_heads"] == 2


def test_shape_inference_goes_on_past_attention():
    """onnx does not know com.microsoft Attention: its handler's stand-in (MatMul + Split) gives the shapes."""
    from onnxprune.core.graph import Graph

    model, _, up, y = mlp_after_attention()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 3]))
    att = next(n for n in model.graph.node if n.op_type == "Attention")
    graph = Graph.build(model)
    assert graph.shape(att.output[0]) == (1, 5, 8) and graph.shape(up) == (1, 5, 16) and graph.shape("y") == (1, 5, 3)
