"""ai.onnx Attention (opset 23), 3-D with q_num_heads / kv_num_heads and 4-D as the dynamo exporter writes
scaled_dot_product_attention: heads are the units (a KV head with its query heads under grouped-query attention),
cutting them lowers the head counts, a constant per-head mask is sliced, a KV cache keeps the heads."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder
from conftest import random_feeds, run_ort
from onnx import helper
from opkit import OUT, assert_groups, attrs, const, cut, kept

S, D, E = 5, 4, 8  # tokens, head_size, model width


def _model(b: GraphBuilder, y: str, x_shape=(1, S, E)) -> onnx.ModelProto:
    model = b.model(x_shape, y, None)
    model.opset_import[0].version = 23
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(model, full_check=True)
    return model


def _projections(b: GraphBuilder, q_heads: int, kv_heads: int) -> tuple[str, str, str]:
    q = b.op("MatMul", ["x", b.const(b.randn(E, q_heads * D), "Wq")])
    k = b.op("MatMul", ["x", b.const(b.randn(E, kv_heads * D), "Wk")])
    v = b.op("MatMul", ["x", b.const(b.randn(E, kv_heads * D), "Wv")])
    return q, k, v


def _flat(q_heads: int = 2, kv_heads: int = 2, mask: np.ndarray | None = None, past: bool = False):
    """x[1,S,E] -> Q, K, V -> Attention (3-D) -> Wo -> y."""
    b = GraphBuilder(7)
    q, k, v = _projections(b, q_heads, kv_heads)
    inputs = [q, k, v, b.const(mask) if mask is not None else ""]
    if past:
        inputs += [b.const(np.zeros((1, kv_heads, 2, D), np.float32)), b.const(np.zeros((1, kv_heads, 2, D),
                                                                                      np.float32))]
    outs = 3 if past else 1
    attended = b.op("Attention", inputs, n_out=outs, q_num_heads=q_heads, kv_num_heads=kv_heads)
    first = attended[0] if past else attended
    y = b.op("MatMul", [first, b.const(b.randn(q_heads * D, 3), "Wo")])
    if past:  # the cache outputs are graph outputs too
        model = _model(b, y)
        model.graph.output.extend([helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [1, kv_heads, S + 2, D])
                                   for o in attended[1:]])
        onnx.checker.check_model(model, full_check=True)
        return model, q
    return _model(b, y), q


def _attention_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Attention")


def test_heads_are_units_and_the_head_counts_follow():
    model, q = _flat(q_heads=2)
    assert_groups(model, [(2, None), (3, OUT)])
    result = cut(model, (q, 8, range(4, 8), 2))
    assert kept(result, q) == [4, 5, 6, 7]
    assert attrs(_attention_node(result.model)) == {"q_num_heads": 1, "kv_num_heads": 1}


def test_grouped_query_heads_go_with_their_kv_head():
    model, q = _flat(q_heads=4, kv_heads=2)
    assert_groups(model, [(2, None), (3, OUT)])  # a KV head with its two query heads
    result = cut(model, (q, 16, range(8, 16), 2))  # the second KV head and query heads 2, 3
    assert attrs(_attention_node(result.model)) == {"q_num_heads": 2, "kv_num_heads": 1}
    wk = next(n for n in result.model.graph.node if n.input[1].startswith("Wk"))
    assert const(result.model, wk.input[1]).shape == (E, D)


def test_a_constant_mask_per_head_is_sliced():
    mask = np.random.default_rng(1).standard_normal((1, 3, S, S)).astype(np.float32)
    model, q = _flat(q_heads=3, kv_heads=3, mask=mask)
    result = cut(model, (q, 12, [0, 1, 2, 3, 8, 9, 10, 11], 2))  # remove head 1
    np.testing.assert_array_equal(const(result.model, _attention_node(result.model).input[3]), mask[:, [0, 2]])


def test_a_kv_cache_keeps_the_heads():
    model, _ = _flat(q_heads=2, past=True)
    assert_groups(model, [(8, "KV cache")] * 3 + [(3, OUT)])  # Q, K and V apart, each kept whole


def _four_d(heads: int = 2) -> tuple[onnx.ModelProto, str]:
    """The dynamo exporter's SDPA: [1,S,H*D] -> Reshape [1,S,H,D] -> Transpose -> Attention (4-D) -> back."""
    b = GraphBuilder(9)
    q, k, v = (b.op("Transpose", [b.op("Reshape", [t, b.ints([1, S, heads, D])])], perm=[0, 2, 1, 3])
               for t in _projections(b, heads, heads))
    attended = b.op("Attention", [q, k, v], is_causal=1)
    merged = b.op("Reshape", [b.op("Transpose", [attended], perm=[0, 2, 1, 3]), b.ints([1, S, heads * D])])
    y = b.op("MatMul", [merged, b.const(b.randn(heads * D, 3), "Wo")])
    model = _model(b, y)
    return model, next(n.output[0] for n in model.graph.node if n.input[1].startswith("Wq"))


def test_four_d_heads_are_units():
    model, q = _four_d(heads=3)
    assert_groups(model, [(3, None), (3, OUT)])
    result = cut(model, (q, 12, range(4, 12), 2))
    assert "q_num_heads" not in attrs(_attention_node(result.model))
    assert const(result.model, next(n for n in result.model.graph.node if n.op_type == "Reshape").input[1]) \
        .tolist() == [1, S, 2, D]


@pytest.mark.parametrize("build", [lambda: _flat(q_heads=4, kv_heads=2)[0], lambda: _four_d()[0]])
def test_the_torch_bridge_runs_it(build):
    torch = pytest.importorskip("torch")
    from onnxprune.training.bridge import OnnxModule, unsupported_ops

    model = build()
    assert unsupported_ops(model) == []
    feeds = random_feeds(model, batch=1)
    with torch.no_grad():
        got = OnnxModule(model).eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    np.testing.assert_allclose(got[0].numpy(), run_ort(model, feeds)[0], rtol=1e-4, atol=1e-5)


def test_multi_query_attention_cuts_query_heads_only():
    model, q = _flat(q_heads=4, kv_heads=1)
    assert_groups(model, [(4, None), (D, "shared by every query head"), (D, "shared by every query head"),
                          (3, OUT)])
    result = cut(model, (q, 16, list(range(4, 12)), 2))  # query heads 1 and 2 stay
    assert attrs(_attention_node(result.model)) == {"q_num_heads": 2, "kv_num_heads": 1}


def test_four_d_multi_query_heads_broadcast_one_kv_head():
    """Q [1, H, S, D] with K and V of one head, [1, 1, S, D]: Attention broadcasts them (grouped-query)."""
    b = GraphBuilder(11)
    q, k, v = _projections(b, 3, 1)
    q = b.op("Transpose", [b.op("Reshape", [q, b.ints([1, S, 3, D])])], perm=[0, 2, 1, 3])
    k, v = (b.op("Transpose", [b.op("Reshape", [t, b.ints([1, S, 1, D])])], perm=[0, 2, 1, 3]) for t in (k, v))
    merged = b.op("Reshape", [b.op("Transpose", [b.op("Attention", [q, k, v])], perm=[0, 2, 1, 3]),
                              b.ints([1, S, 3 * D])])
    model = _model(b, b.op("MatMul", [merged, b.const(b.randn(3 * D, 3), "Wo")]))
    q_proj = next(n.output[0] for n in model.graph.node if len(n.input) > 1 and n.input[1].startswith("Wq"))
    result = cut(model, (q_proj, 12, list(range(0, 4)), 2))  # query head 0 stays
    wo = next(n for n in result.model.graph.node if len(n.input) > 1 and n.input[1].startswith("Wo"))
    assert const(result.model, wo.input[1]).shape == (D, 3)


def test_multi_query_attention_slices_a_constant_mask_per_head():
    mask = np.random.default_rng(2).standard_normal((1, 4, S, S)).astype(np.float32)
    model, q = _flat(q_heads=4, kv_heads=1, mask=mask)
    result = cut(model, (q, 16, list(range(4, 12)), 2))  # query heads 1 and 2 stay
    np.testing.assert_array_equal(const(result.model, _attention_node(result.model).input[3]), mask[:, [1, 2]])
