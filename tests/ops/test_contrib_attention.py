"""com.microsoft Attention (onnxprune/ops/contrib_attention.py): what it reads is blocked (heads are not cut yet);
the MLP after it prunes even without value_info, because the handler gives the output's rank."""
from __future__ import annotations

import numpy as np
from builders import GraphBuilder, _finish
from opkit import OUT, assert_groups, cut, declared, macs, name_of, port

MS = [("com.microsoft", 1)]


def mlp_after_attention():
    """x[1,5,8] -> A: MatMul(8->8) -> Attention(2 heads, packed QKV [8,24]) -> B: MatMul(8->16) -> Relu
    -> C: MatMul(16->3) -> y          groups: A's 8 (blocked: attention), B's 16 (prunable), C's 3 (output)"""
    b = GraphBuilder(11)
    a = b.op("MatMul", ["x", b.const(b.randn(8, 8), "W")])
    att = b.op("Attention", [a, b.const(b.randn(8, 24), "Wqkv"), b.const(b.randn(24, scale=0.1), "Bqkv")],
               domain="com.microsoft", num_heads=2)
    up = b.op("MatMul", [att, b.const(b.randn(8, 16), "W")])
    act = b.relu(up)
    y = b.op("MatMul", [act, b.const(b.randn(16, 3), "W")])
    return _finish(b, y, x_shape=(1, 5, 8), extra_opsets=MS), {att: 8, up: 16, act: 16}, up, y


def test_attention_blocks_its_input_and_the_mlp_after_it_prunes():
    model, widths, up, y = mlp_after_attention()
    assert_groups(model, [(8, "attention heads are not cut yet"), (16, None), (3, OUT)])  # no value_info
    result = cut(declared(model, widths), (up, 16, [1, 2, 7, 8, 9, 15], 2))
    new = result.model
    np.testing.assert_array_equal(port(new, name_of(up), 1), port(model, name_of(up), 1)[:, [1, 2, 7, 8, 9, 15]])
    np.testing.assert_array_equal(port(new, name_of(y), 1), port(model, name_of(y), 1)[[1, 2, 7, 8, 9, 15]])
    assert macs(model, name_of(up)) == 5 * 16 * 8 and macs(new, name_of(up)) == 5 * 6 * 8
