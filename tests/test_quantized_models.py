"""A 4-bit transformer: the llama decoder of the transformer suite (legacy export) with its MatMul weights
quantized by onnxruntime's MatMulNBitsQuantizer (blocks of 16 along K) prunes its MLP width, attention heads and
hidden width in whole quantization blocks, as its float model does, mask-exactly."""
from __future__ import annotations

import onnx
import pytest
from conftest import assert_mask_equivalent, interface

import onnxprune
from onnxprune.core.handlers import attr

pytest.importorskip("transformers")
transformer_models = pytest.importorskip("transformer_models")
pytestmark = pytest.mark.slow
BLOCK = 16


def test_matmul_nbits_llama_prunes_in_whole_blocks(tmp_path):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    float_model = onnx.load(transformer_models.export("llama", "legacy", tmp_path / "llama.onnx"))
    quantizer = MatMulNBitsQuantizer(float_model, block_size=BLOCK, is_symmetric=True)
    quantizer.process()
    model = quantizer.model.model
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) >= 10
    analysis = onnxprune.analyze(model)
    mlp = [g for g in analysis.groups if g.kind == "mlp" and g.prunable]
    assert mlp and all(analysis.labels[g.tensors[0]].size == BLOCK * g.size for g in mlp)  # a unit is a block
    want = onnxprune.prune(float_model, onnxprune.PruneConfig(ratio=0.5))
    got = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    onnx.checker.check_model(got.model, full_check=True)
    assert interface(got.model) == interface(model)
    assert got.verification is not None and got.verification.mask_equivalent is True
    assert_mask_equivalent(model, got.model, got.plan)
    for node in got.model.graph.node:
        if node.op_type == "MatMulNBits":
            assert attr(node, "K") % BLOCK == 0
    assert abs(got.report["macs_kept"] - want.report["macs_kept"]) <= 0.02
    assert got.report["macs_kept"] < 0.35
    assert got.report["after"]["params_by_type"]["int4"] < got.report["before"]["params_by_type"]["int4"]
