"""Heads folded into a dynamic batch axis and back (torch's nn.MultiheadAttention through the dynamo exporter):
[L, B, H*D] -Reshape [L, -1, D]-> [L, B*H, D] -Transpose-> [B*H, L, D] -Reshape [-1, H, L, D]-> [B, H, L, D], and
K^T through [-1, L, D] / Shape-computed targets. Whole heads are the units; only the splitting Reshapes' head
count changes. The oracle runs at batch 2, so a head count written in the wrong place would mix samples."""
from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, _finish
from conftest import run_ort
from opkit import OUT, assert_groups, const, cut, kept

L, D, E = 4, 4, 8  # sequence length, head_dim, model width


def _mha(heads: int = 2, shape_read_k: bool = False) -> tuple[onnx.ModelProto, str]:
    """x[L, batch, E] -> Q, K, V MatMuls -> batch-folded heads -> attention -> [L*batch, H*D] -> Wo -> y."""
    b = GraphBuilder(3)

    def heads_of(name: str) -> str:
        proj = b.op("MatMul", ["x", b.const(b.randn(E, heads * D), name)])
        folded = b.op("Transpose", [b.op("Reshape", [proj, b.ints([L, -1, D])])], perm=[1, 0, 2])
        return b.op("Reshape", [folded, b.ints([-1, heads, L, D])])

    q, k, v = heads_of("Wq"), heads_of("Wk"), heads_of("Wv")
    if shape_read_k:  # k.transpose(-2, -1) as the dynamo exporter decomposes it: Shape-computed targets
        dims = b.op("Shape", [k])

        def piece(start: int, end: int) -> str:
            return b.op("Slice", [dims, b.ints([start]), b.ints([end])])

        flat = b.op("Reshape", [k, b.op("Concat", [b.ints([-1]), piece(-2, -1), piece(-1, 4)], axis=0)])
        swapped = b.op("Transpose", [flat], perm=[0, 2, 1])
        kt = b.op("Reshape", [swapped, b.op("Concat", [piece(0, -2), piece(-1, 4), piece(-2, -1)], axis=0)])
    else:
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    p = b.op("Softmax", [b.op("MatMul", [q, kt])], axis=-1)
    merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [p, v])], perm=[2, 0, 1, 3]),
                              b.ints([-1, heads * D])])
    y = b.op("MatMul", [merged, b.const(b.randn(heads * D, 3), "Wo")])
    model = _finish(b, y, x_shape=(L, "batch", E))
    q_proj = next(n.output[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("Wq"))
    return model, q_proj


def _split_counts(model: onnx.ModelProto) -> list[list[int]]:
    return [list(const(model, n.input[1])) for n in model.graph.node
            if n.op_type == "Reshape" and n.input[1].startswith("i") and len(const(model, n.input[1])) == 4]


def test_heads_folded_into_the_batch_are_units():
    model, q_proj = _mha(heads=2)
    assert_groups(model, [(2, None), (3, OUT)])  # Q, K, V and Wo's inputs: 2 heads
    result = cut(model, (q_proj, 8, range(4, 8), 2))  # remove head 0
    assert kept(result, q_proj) == [4, 5, 6, 7]
    assert _split_counts(result.model) == [[-1, 1, L, D]] * 3  # [L, -1, D] and [-1, H*D] follow by themselves
    assert sorted(list(const(result.model, n.input[1])) for n in result.model.graph.node
                  if n.op_type == "Reshape" and len(const(result.model, n.input[1])) == 3) == [[L, -1, D]] * 3


def test_shape_read_targets_follow_the_cut():
    model, q_proj = _mha(heads=3, shape_read_k=True)
    assert_groups(model, [(3, None), (3, OUT)])
    result = cut(model, (q_proj, 12, [0, 1, 2, 3, 8, 9, 10, 11], 2))  # remove the middle head
    assert not [n for n in result.model.graph.node if n.op_type == "ScatterElements"]
    x = np.random.default_rng(0).standard_normal((L, 3, E)).astype(np.float32)
    whole = run_ort(result.model, {"x": x})[0].reshape(L, 3, 3)
    each = [run_ort(result.model, {"x": x[:, j:j + 1]})[0] for j in range(3)]
    np.testing.assert_allclose(whole, np.stack(each, axis=1), rtol=1e-5, atol=1e-6)  # samples never mix


def test_a_fold_without_the_split_back_stays_blocked():
    b = GraphBuilder(4)
    proj = b.op("MatMul", ["x", b.const(b.randn(E, 2 * D), "Wq")])
    folded = b.op("Reshape", [proj, b.ints([L, -1, D])])  # [L, B*2, D] reaches the output as it is
    y = b.op("Relu", [folded])
    model = _finish(b, y, x_shape=(L, "batch", E))
    assert_groups(model, [(8, "Reshape")])
