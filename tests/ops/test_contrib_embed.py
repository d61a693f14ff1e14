"""com.microsoft EmbedLayerNormalization (onnxprune/ops/contrib_embed.py): its output is the hidden width, kept whole
with the reason (the fused LayerNorm's statistics cover every table column); the MLP after it still prunes
exactly, and so does a mask index output beside it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from opkit import OUT, assert_groups, const, cut

S, H, VOCAB = 5, 6, 11


def _embedded() -> onnx.ModelProto:
    """ids, segments, mask (int32 [1, S]) -> EmbedLayerNormalization (H) -> MatMul (8) -> Relu -> MatMul (3) -> y,
    and the mask index."""
    rng = np.random.default_rng(3)
    tables = {"word": (VOCAB, H), "position": (S, H), "segment": (2, H), "W1": (H, 8), "W2": (8, 3)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in tables.items()]
    inits += [numpy_helper.from_array((np.abs(rng.standard_normal(H)) + 0.5).astype(np.float32), "gamma"),
              numpy_helper.from_array((rng.standard_normal(H) * 0.1).astype(np.float32), "beta")]
    nodes = [helper.make_node("EmbedLayerNormalization",
                              ["ids", "segments", "word", "position", "segment", "gamma", "beta", "mask"],
                              ["embedded", "mask_index"], domain="com.microsoft", epsilon=1e-5),
             helper.make_node("MatMul", ["embedded", "W1"], ["up"]),
             helper.make_node("Relu", ["up"], ["act"]),
             helper.make_node("MatMul", ["act", "W2"], ["y"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT32, [1, S]) for n in ("ids", "segments", "mask")]
    graph = helper.make_graph(
        nodes, "embed", ids,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, 3]),
         helper.make_tensor_value_info("mask_index", TensorProto.INT32, [1])], inits,
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, S, w])
                    for n, w in (("embedded", H), ("up", 8), ("act", 8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def test_the_hidden_width_stays_and_the_mlp_prunes():
    model = _embedded()
    assert_groups(model, [(H, "normalises the hidden width inside the fused op"), (8, None), (3, OUT)])
    result = cut(model, ("up", 8, [0, 3, 4, 7], 2))
    np.testing.assert_array_equal(const(result.model, "W2"), const(model, "W2")[[0, 3, 4, 7]])
    fused = next(n for n in result.model.graph.node if n.op_type == "EmbedLayerNormalization")
    assert const(result.model, fused.input[2]).shape == (VOCAB, H)
