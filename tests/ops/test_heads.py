"""Attention heads as units: Reshape [B,S,H*D] -> [B,S,H,D] makes whole heads the units (head_dim stays), the
batched MatMuls Q K^T and P V tie Q, K and V heads and pass them on, Expand repeats KV heads for grouped-query
attention, and computed Reshape shapes are patched to the new head count. Expected constants worked out by hand."""
from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, _finish, attention_block
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, const, cut, groups, kept, port

import onnxprune

S, D = 4, 4  # sequence length, head_dim (as builders.attention_block)


def _proj(model: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    """The projection MatMul whose weight's name starts with ``weight`` (Wq, Wk, Wv, Wo)."""
    return next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith(weight))


def _q_proj(model: onnx.ModelProto) -> str:
    return _proj(model, "Wq").output[0]


def test_heads_are_units_of_head_dim_channels():
    model, q, merged = attention_block(heads=2)
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
    model, q, _ = attention_block(heads=2, computed_shape=True)
    assert_groups(model, [(2, None), (3, OUT)])
    result = cut(model, (_q_proj(model), 8, range(0, 4), 2))
    producers = {o: n for n in result.model.graph.node for o in n.output}
    shapes = [producers.get(n.input[1]) for n in result.model.graph.node if n.op_type == "Reshape"]
    copies = [c for c in shapes if c is not None and c.op_type == "Concat" and c.name.endswith("_pruned")]
    assert len(copies) == 3  # Q, K, V shapes: a copy of the Concat whose constant head count (2) becomes 1
    assert all([list(const(result.model, c.input[1]))] == [[1, 4]] for c in copies)  # [heads, head_dim]
    assert not [n for n in result.model.graph.node if n.op_type == "ScatterElements"]


def test_grouped_query_attention_keeps_query_heads_with_their_kv_head():
    model, q, merged = attention_block(heads=4, kv_heads=2)
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


def test_a_kv_cache_input_keeps_the_heads_with_the_reason():
    """past_k [1,2,3,D] (graph input) ++ K along the sequence axis -> Q K^T ... : the cache's shape must not
    change, so the heads stay, with a reason naming the Concat and the input."""
    b = GraphBuilder(8)
    q = b.op("Transpose", [b.op("Reshape", [b.op("MatMul", ["x", b.const(b.randn(8, 8), "Wq")]),
                                            b.ints([1, S, 2, D])])], perm=[0, 2, 1, 3])
    k = b.op("Transpose", [b.op("Reshape", [b.op("MatMul", ["x", b.const(b.randn(8, 8), "Wk")]),
                                            b.ints([1, S, 2, D])])], perm=[0, 2, 1, 3])
    k_all = b.op("Concat", ["past_k", k], axis=2)
    scores = b.op("MatMul", [q, b.op("Transpose", [k_all], perm=[0, 1, 3, 2])])
    y = b.op("ReduceSum", [scores, b.ints([1])], keepdims=0)
    model = b.model((1, S, 8), y, (1, S, S + 3))
    model.graph.input.append(helper.make_tensor_value_info("past_k", TensorProto.FLOAT, [1, 2, 3, D]))
    reasons = [r for _, r in groups(model)]
    assert reasons and all(r is not None for r in reasons)
    assert any("joins graph input 'past_k' along another axis (a cache" in r for r in reasons), reasons


def test_new_nodes_never_reuse_a_node_name():
    """The copy of a computed shape's Concat is named after it (``<concat>_pruned``); a node of that name already
    in the graph (a model pruned before) must not be repeated."""
    model, _, _ = attention_block(heads=2, computed_shape=True)
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    next(n for n in model.graph.node if n.op_type == "Softmax").name = f"{concat.name}_pruned"
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    names = [n.name for n in pruned.graph.node if n.name]
    assert len(names) == len(set(names)) and sum(n.name.startswith(concat.name) for n in pruned.graph.node) >= 2
