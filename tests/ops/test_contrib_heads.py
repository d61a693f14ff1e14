"""com.microsoft MultiHeadAttention, RotaryEmbedding and GroupQueryAttention (onnxprune/ops/contrib_heads.py):
heads of already projected Q, K and V are units (head_dim blocks tied, head h of Q, K, V and the output together),
cutting them lowers num_heads and slices the packed bias; a KV cache keeps the heads with the reason."""
from __future__ import annotations

import numpy as np
import pytest
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, attrs, cut, kept, port

MS = [("com.microsoft", 1)]
S, D, H = 5, 4, 2  # tokens, head_dim, heads


def mha(rotary: bool = False, bias: bool = True, cache: bool = False):
    """x[1,S,8] -> Q, K, V: MatMul(8->H*D) [-> RotaryEmbedding(Q), (K)] -> MultiHeadAttention(num_heads=H,
    bias [3*H*D]?) -> O: MatMul(H*D->3) -> y"""
    b = GraphBuilder(3)
    q, k, v = (b.op("MatMul", ["x", b.const(b.randn(8, H * D), w)]) for w in ("Wq", "Wk", "Wv"))
    if rotary:
        pos = b.const(np.zeros((1, S), np.int64), "pos")
        cos, sin = (b.const(f(np.arange(S)[:, None] * np.ones((1, D // 2))).astype(np.float32), n)
                    for f, n in ((np.cos, "cos"), (np.sin, "sin")))
        q, k = (b.op("RotaryEmbedding", [t, pos, cos, sin], domain="com.microsoft", num_heads=H) for t in (q, k))
    inputs = [q, k, v, b.const(b.randn(3 * H * D, scale=0.1), "bias") if bias else ""]
    if cache:
        empty = np.zeros((1, H, 0, D), np.float32)  # past key and value: [batch, heads, 0, head_dim]
        inputs += ["", "", b.const(empty, "pk"), b.const(empty, "pv")]
    att = b.op("MultiHeadAttention", inputs, n_out=3 if cache else 1, domain="com.microsoft", num_heads=H)
    out = att[0] if cache else att
    y = b.op("MatMul", [out, b.const(b.randn(H * D, 3), "Wo")])
    model = _finish(b, y, x_shape=(1, S, 8), extra_opsets=MS)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, 3]))
    return model, q, out, y


@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_multi_head_attention_cuts_whole_heads(rotary):
    model, q, out, y = mha(rotary=rotary)
    assert_groups(model, [(H, None), (3, OUT)])
    q_proj = next(n for n in model.graph.node if n.op_type == "MatMul")
    result = cut(model, (q_proj.output[0], H * D, range(D, 2 * D), 2))  # keep head 1
    new = {n.op_type: n for n in result.model.graph.node}
    assert attrs(new["MultiHeadAttention"])["num_heads"] == 1
    if rotary:
        assert attrs(new["RotaryEmbedding"])["num_heads"] == 1
    assert kept(result, out) == list(range(D, 2 * D))
    old_bias = port(model, new["MultiHeadAttention"].name, 3)  # names are kept
    np.testing.assert_array_equal(port(result.model, new["MultiHeadAttention"].name, 3),
                                  old_bias[np.r_[D:2 * D, H * D + D:H * D + 2 * D, 2 * H * D + D:2 * H * D + 2 * D]])


def test_multi_head_attention_with_a_cache_keeps_its_heads():
    model, *_ = mha(bias=False, cache=True)
    assert_groups(model, [(H * D, "has a KV cache"), (H * D, "has a KV cache"), (H * D, "has a KV cache"),
                          (3, OUT)])


def test_group_query_attention_keeps_its_heads_with_the_reason():
    b = GraphBuilder(4)
    q = b.op("MatMul", ["x", b.const(b.randn(8, 8), "W")])
    gqa = b.op("GroupQueryAttention", [q, q, q], n_out=3, domain="com.microsoft", num_heads=2, kv_num_heads=2)
    y = b.op("MatMul", [gqa[0], b.const(b.randn(8, 3), "W")])
    model = _finish(b, y, x_shape=(1, S, 8), extra_opsets=MS)
    assert_groups(model, [(8, "GroupQueryAttention"), (3, OUT)])
