"""Slicing handlers (onnxprune/ops/slicing.py): Concat, Split, Slice and Gather join or cut the channel axis.
Expected index maps, constants and weights are worked out by hand here."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, _finish
from onnx import TensorProto, helper
from opkit import OUT, assert_groups, const, cut, groups, kept, macs, name_of, node, port

import onnxprune


def _tail(b: GraphBuilder, h: str, cin: int) -> str:
    """The blocked consumer every graph ends in: Conv(cin->2, 3x3) -> y."""
    return b.conv(h, cin, 2)


def test_concat_maps_each_input_to_its_offset():
    """x -+-> A: Conv(3->4) -+
          +-> B: Conv(3->3) -+-> Concat(axis=1) [7] -> C: Conv(7->2) -> y"""
    b = GraphBuilder(40)
    a, c = b.conv("x", 3, 4), b.conv("x", 3, 3)
    cat = b.op("Concat", [a, c], axis=1)
    y = _tail(b, cat, 7)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (3, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]), (c, 3, [0, 2]))
    assert kept(result, cat) == [0, 3, 4 + 0, 4 + 2]
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 3, 4, 6]])
    assert macs(result.model, name_of(y)) == (2 * 64) * 4 * 9


def test_concat_with_a_graph_input_fixes_its_channels():
    """x[3] -> A: Conv(3->4) -+-> Concat [7] -> Conv(7->2) -> y
    x ------------------------+      x's 3 channels: blocked (fixed)"""
    b = GraphBuilder(41)
    a = b.conv("x", 3, 4)
    model = _finish(b, _tail(b, b.op("Concat", [a, "x"], axis=1), 7))
    assert_groups(model, [(4, None), (3, "fixed channels from 'x'"), (2, OUT)])


@pytest.mark.parametrize("explicit", [True, False])
def test_split_sizes_are_rewritten(explicit):
    """x -> A: Conv(3->6) -> Split(axis=1, [2|4] or equal [3|3]) -> P: Conv(.->2), Q: Conv(.->2) -> Add -> y"""
    b = GraphBuilder(42)
    a = b.conv("x", 3, 6)
    sizes = [2, 4] if explicit else [3, 3]
    p, q = b.op("Split", [a, b.ints(sizes)] if explicit else [a], n_out=2, axis=1)
    pc, qc = b.conv(p, sizes[0], 2), b.conv(q, sizes[1], 2)
    model = _finish(b, b.op("Add", [pc, qc]))
    assert_groups(model, [(6, None), (2, OUT)])
    keep = [1, 2, 4, 5] if explicit else [0, 2, 3, 5]
    result = cut(model, (a, 6, keep))
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    np.testing.assert_array_equal(const(result.model, split.input[1]), [1, 3] if explicit else [2, 2])
    want_p, want_q = ([1], [0, 2, 3]) if explicit else ([0, 2], [0, 2])  # local indices of each chunk
    np.testing.assert_array_equal(port(result.model, name_of(pc), 1), port(model, name_of(pc), 1)[:, want_p])
    np.testing.assert_array_equal(port(result.model, name_of(qc), 1), port(model, name_of(qc), 1)[:, want_q])


def test_slice_bounds_are_rewritten():
    """x -> A: Conv(3->6) -> Slice(axis 1, [1:4]) -> C: Conv(3->2) -> y
    keep {0, 2, 3, 5}: the window [1, 4) holds 2 and 3, at new positions 1 and 2 -> Slice [1:3]"""
    b = GraphBuilder(43)
    a = b.conv("x", 3, 6)
    s = b.op("Slice", [a, b.ints([1]), b.ints([4]), b.ints([1])])
    y = _tail(b, s, 3)
    model = _finish(b, y)
    assert_groups(model, [(6, None), (2, OUT)])
    result = cut(model, (a, 6, [0, 2, 3, 5]))
    sl = node(result.model, name_of(s))
    assert list(const(result.model, sl.input[1])) == [1] and list(const(result.model, sl.input[2])) == [3]
    assert kept(result, s) == [1, 2]  # of the slice's 3 channels (1, 2, 3), channel 1 went
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [1, 2]])


def test_slice_striding_over_channels_blocks():
    """x -> Conv(3->6) -> Slice(axis 1, [0:6:2]) -> Conv(3->2) -> y"""
    b = GraphBuilder(44)
    s = b.op("Slice", [b.conv("x", 3, 6), b.ints([0]), b.ints([6]), b.ints([1]), b.ints([2])])
    assert_groups(_finish(b, _tail(b, s, 3)), [(6, "strides over the channel axis"), (2, OUT)])


def test_gather_indices_are_rewritten():
    """x -> A: Conv(3->4) -> Gather(axis=1, [3, 0, 2, 2]) -> C: Conv(4->2) -> y
    keep {0, 3}: gathered positions 0 (channel 3) and 1 (channel 0) survive; new indices [1, 0]"""
    b = GraphBuilder(45)
    a = b.conv("x", 3, 4)
    g = b.op("Gather", [a, b.ints([3, 0, 2, 2])], axis=1)
    y = _tail(b, g, 4)
    model = _finish(b, y)
    assert_groups(model, [(4, None), (2, OUT)])
    result = cut(model, (a, 4, [0, 3]))
    assert kept(result, g) == [0, 1]
    np.testing.assert_array_equal(const(result.model, node(result.model, name_of(g)).input[1]), [1, 0])
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[:, [0, 1]])


def test_gather_with_channels_as_indices_blocks():
    """x -> A: Conv(3->4) -> Cast(int64) = idx;  Gather(data[10,8,8], idx) -> ... : A's values are indices"""
    b = GraphBuilder(46)
    idx = b.op("Cast", [b.op("Abs", [b.conv("x", 3, 4, k=1)])], to=7)
    data = b.const(b.randn(5, 2), "D")
    clipped = b.op("Mod", [idx, b.ints([5])])
    y = b.op("Gather", [data, clipped], axis=0)
    model = _finish(b, y)
    reasons = [r for _, r in groups(model)]
    assert reasons and "takes channels as indices" in reasons[0]


def test_gather_gives_its_output_rank_where_shape_inference_gives_up():
    """x[1,5,4] -> A: MatMul(4->6) -> com.microsoft Gelu (untyped) -> Gather(axis 1, index 0) -> Gemm(6->3) -> y
    (a BERT pooler after onnxruntime's fusion): the Gemm's output rank is 3 - 1 + 0 = 2, so the library verifies
    the cut of A's 6 channels on the bare graph."""
    b = GraphBuilder(5)
    a = b.op("MatMul", ["x", b.const(b.randn(4, 6), "W")])
    g = b.op("Gelu", [a], domain="com.microsoft")
    first = b.op("Gather", [g, b.const(np.array(0, dtype=np.int64), "i", as_node=False)], axis=1)
    y = b.gemm(first, 6, 3)
    model = _finish(b, y, x_shape=(1, 5, 4), extra_opsets=[("com.microsoft", 1)])
    assert [(s, r) for s, r in groups(model)][0] == (6, None)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert result.report["groups"][0]["kept"] == 3


def _token_model(b: GraphBuilder, y: str, seq: int = 4) -> onnx.ModelProto:
    """The builder's graph with an int64 ``ids`` [1, seq] input instead of ``x``."""
    graph = helper.make_graph(b.nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def test_embedding_table_columns_are_the_hidden_width():
    """ids -> Gather(table[10,6]) + position table[1,4,6] -> LayerNorm -> B: MatMul(6->3) -> y
    the table's columns are channels; the LayerNorm keeps dividing by 6 (exact)"""
    b = GraphBuilder(60)
    emb = b.op("Gather", [b.const(b.randn(10, 6), "E"), "ids"], axis=0)
    pos = b.op("Add", [emb, b.const(b.randn(1, 4, 6), "P")])
    ln = b.op("LayerNormalization", [pos, b.const(b.randn(6) + 1, "g"), b.const(b.randn(6), "b")], axis=-1)
    y = b.op("MatMul", [ln, b.const(b.randn(6, 3), "W")])
    model = _token_model(b, y)
    assert_groups(model, [(6, None), (3, "reaches graph output")])
    result = cut(model, (emb, 6, [0, 2, 3, 5], 2))
    np.testing.assert_array_equal(port(result.model, name_of(emb), 0), port(model, name_of(emb), 0)[:, [0, 2, 3, 5]])
    np.testing.assert_array_equal(port(result.model, name_of(y), 1), port(model, name_of(y), 1)[[0, 2, 3, 5]])


def test_a_class_token_expanded_and_joined_keeps_the_kept_channels():
    """x[1,4,6] -> A: MatMul(6->6); Concat(Expand(cls[1,1,6], Shape(x)[0:1] ++ [1,1]), A, axis=1) [1,5,6]
    -> B: MatMul(6->3) -> y: the class token is cut with A's channels; its Expand shape keeps axis 2 at 1"""
    b = GraphBuilder(61)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 6), "W")])
    batch = b.op("Slice", [b.op("Shape", ["x"]), b.ints([0]), b.ints([1])])
    cls = b.op("Expand", [b.const(b.randn(1, 1, 6), "cls"), b.op("Concat", [batch, b.ints([1, 1])], axis=0)])
    joined = b.op("Concat", [cls, a], axis=1)
    y = b.op("MatMul", [joined, b.const(b.randn(6, 3), "W")])
    model = _finish(b, y, x_shape=(1, 4, 6))
    assert_groups(model, [(6, None), (3, OUT)])
    result = cut(model, (a, 6, [1, 4], 2))
    expand, before = (next(n for n in m.graph.node if n.op_type == "Expand") for m in (result.model, model))
    np.testing.assert_array_equal(const(result.model, expand.input[0]), const(model, before.input[0])[:, :, [1, 4]])
