"""Attention heads as units: Reshape [B,S,H*D] -> [B,S,H,D] makes whole heads the units (head_dim stays), the
batched MatMuls Q K^T and P V tie Q, K and V heads and pass them on, Expand repeats KV heads for grouped-query
attention, and computed Reshape shapes are patched to the new head count. Expected constants worked out by hand."""
from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, const, cut, groups, kept, port

S, D = 4, 4  # sequence length, head_dim


def _attention(heads: int = 2, kv_heads: int | None = None, computed_shape: bool = False) -> tuple:
    """x[1,S,8] -> Q: MatMul(8->H*D), K, V: MatMul(8->KV*D) -> Reshape [1,S,H,D] -> Transpose [1,H,S,D]
    (K, V: repeated KV -> H by Unsqueeze/Expand/Reshape) -> Q K^T -> Softmax -> P V -> Transpose ->
    Reshape [1,S,H*D] -> O: MatMul(H*D->3) -> y"""
    kv = kv_heads or heads
    b = GraphBuilder(5)

    def heads_of(width: int, count: int, name: str) -> str:
        proj = b.op("MatMul", ["x", b.const(b.randn(8, width), name)])
        if computed_shape:  # Concat(Shape(x)[0:2], [count, D]) as the legacy exporter writes it
            lead = b.op("Slice", [b.op("Shape", ["x"]), b.ints([0]), b.ints([2])])
            shape = b.op("Concat", [lead, b.ints([count, D])], axis=0)
        else:
            shape = b.ints([1, S, count, D])
        return b.op("Transpose", [b.op("Reshape", [proj, shape])], perm=[0, 2, 1, 3])

    q, k, v = heads_of(heads * D, heads, "Wq"), heads_of(kv * D, kv, "Wk"), heads_of(kv * D, kv, "Wv")
    if kv != heads:
        def repeat(t: str) -> str:
            e = b.op("Expand", [b.op("Unsqueeze", [t, b.ints([2])]), b.ints([1, kv, heads // kv, S, D])])
            return b.op("Reshape", [e, b.ints([1, heads, S, D])])
        k, v = repeat(k), repeat(v)
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    p = b.op("Softmax", [b.op("Mul", [scores, b.floats([0.5])])], axis=-1)
    merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3]),
                              b.ints([1, S, heads * D])])
    y = b.op("MatMul", [merged, b.const(b.randn(heads * D, 3), "Wo")])
    return _finish(b, y, x_shape=(1, S, 8)), q, merged


def _proj(model: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    """The projection MatMul whose weight's name starts with ``weight`` (Wq, Wk, Wv, Wo)."""
    return next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith(weight))


def _q_proj(model: onnx.ModelProto) -> str:
    return _proj(model, "Wq").output[0]


def test_heads_are_units_of_head_dim_channels():
    model, q, merged = _attention(heads=2)
    assert_groups(model, [(2, None), (3, OUT)])  # Q, K, V and O's inputs: one group of 2 heads
    result = cut(model, (_q_proj(model), 8, range(4, 8), 2))  # remove head 0
    assert kept(result, q) == [1]  # the transposed Q lists heads on axis 1
    assert kept(result, merged) == [4, 5, 6, 7]
    reshapes = [n for n in result.model.graph.node if n.op_type == "Reshape"]
    assert [list(const(result.model, n.input[1])) for n in reshapes] == [[1, S, 1, D]] * 3 + [[1, S, D]]
    wk, wo = _proj(model, "Wk").name, _proj(model, "Wo").name
    np.testing.assert_array_equal(port(result.model, wk, 1), port(model, wk, 1)[:, 4:])
    np.testing.assert_array_equal(port(result.model, wo, 1), port(model, wo, 1)[4:])


def test_a_computed_reshape_shape_gets_the_new_head_count():
    model, q, _ = _attention(heads=2, computed_shape=True)
    assert_groups(model, [(2, None), (3, OUT)])
    result = cut(model, (_q_proj(model), 8, range(0, 4), 2))
    scatters = [n for n in result.model.graph.node if n.op_type == "ScatterElements"]
    assert len(scatters) == 3  # Q, K, V shapes: entry 2 (heads) becomes 1
    assert all(list(const(result.model, n.input[1])) == [2] and list(const(result.model, n.input[2])) == [1]
               for n in scatters)


def test_grouped_query_attention_keeps_query_heads_with_their_kv_head():
    model, q, merged = _attention(heads=4, kv_heads=2)
    assert_groups(model, [(2, None), (3, OUT)])  # 2 units: a KV head with its 2 query heads
    result = cut(model, (_q_proj(model), 16, range(8, 16), 2))
    assert kept(result, q) == [2, 3]
    expands = [n for n in result.model.graph.node if n.op_type == "Expand"]
    assert [list(const(result.model, n.input[1])) for n in expands] == [[1, 1, 2, S, D]] * 2
    assert port(result.model, _proj(model, "Wk").name, 1).shape == (8, 4)
    assert port(result.model, _proj(model, "Wo").name, 1).shape == (8, 3)


def test_heads_summed_over_by_a_matmul_block():
    """Q K^T where Q's channels sit on the reduced axis (no head split): blocked with the reason."""
    b = GraphBuilder(6)
    q = b.op("MatMul", ["x", b.const(b.randn(8, 4), "Wq")])
    k = b.op("MatMul", ["x", b.const(b.randn(8, 4), "Wk")])
    y = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
    model = _finish(b, y, x_shape=(1, S, 8))
    reasons = [r for _, r in groups(model)]
    assert reasons and all(r is not None and "sums over the channels of two computed tensors" in r for r in reasons)


def test_expand_of_the_channel_axis_blocks():
    """x -> Conv(3->1) [1,1,8,8] -> Expand [1,4,8,8] -> Conv(4->2) -> y: the channel axis is broadcast"""
    b = GraphBuilder(7)
    e = b.op("Expand", [b.conv("x", 3, 1), b.ints([1, 4, 8, 8])])
    model = _finish(b, b.conv(e, 4, 2))
    assert groups(model)[0][1] is not None and "broadcasts the channel axis" in groups(model)[0][1]
