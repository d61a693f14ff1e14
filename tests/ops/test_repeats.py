"""Multi-query attention (onnxprune/ops/repeats.py, linear._batched): one K/V head repeated for every query head
(Unsqueeze -> Expand [1, 1, H, S, D] -> Reshape [1, H, S, D]). Query heads are the units; the K/V head stays
whole (its channels blocked with the reason); cutting heads shortens the repeat, and the products' outputs are
masked with the heads, so the result is mask-exact although a softmax sits between them."""
from __future__ import annotations

import numpy as np
from builders import attention_block
from opkit import OUT, assert_groups, const, cut, kept

S, D = 4, 4  # as builders.attention_block


def _expands(model) -> list[list[int]]:
    return [list(const(model, n.input[1])) for n in model.graph.node if n.op_type == "Expand"]


def test_query_heads_share_one_kv_head():
    model, q, merged = attention_block(heads=4, kv_heads=1)
    assert_groups(model, [(4, None), (4, "shared by every query head"), (4, "shared by every query head"),
                          (3, OUT)])
    q_proj = next(n.output[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("Wq"))
    result = cut(model, (q_proj, 16, list(range(4, 12)), 2))  # query heads 1 and 2 stay
    assert kept(result, merged) == list(range(4, 12))
    assert _expands(result.model) == [[1, 1, 2, S, D]] * 2  # the K and V repeats: 2 copies
    reshapes = [list(const(result.model, n.input[1])) for n in result.model.graph.node if n.op_type == "Reshape"]
    assert reshapes.count([1, 2, S, D]) == 2  # the merged repeats
    wk = next(n for n in result.model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("Wk"))
    np.testing.assert_array_equal(const(result.model, wk.input[1]), const(model, wk.input[1]))  # K stays whole


def test_grouped_query_attention_still_cuts_kv_heads():
    model, _, _ = attention_block(heads=4, kv_heads=2)
    assert_groups(model, [(2, None), (3, OUT)])  # a KV head with its query heads, as before
