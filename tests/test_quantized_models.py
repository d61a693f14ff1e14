"""Quantized transformers of the transformer suite (legacy exports): dynamic and QDQ bert/llama, and the llama
decoder with its MatMul weights quantized by onnxruntime's MatMulNBitsQuantizer (blocks of 16 along K), which
prunes its MLP width, attention heads and hidden width in whole quantization blocks; all as their float models
do, mask-exactly."""
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


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("form", ["dynamic", "qdq"])
def test_quantized_transformers_prune_like_their_float_models(arch, form, tmp_path):
    """Dynamic (quantized embedding tables gathered as codes, MatMulInteger) and static QDQ per-channel (biases
    the quantizer shares through Identity -> QuantizeLinear -> DequantizeLinear) at --ratio 0.5: heads, MLP and
    hidden width all cut, MACs kept as the float model's, mask-exact."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    src = transformer_models.export(arch, "legacy", tmp_path / f"{arch}.onnx")
    float_model = onnx.load(src)
    dst = tmp_path / f"{arch}.{form}.onnx"
    if form == "dynamic":
        quantize_dynamic(str(src), str(dst))
    else:
        names = [i.name for i in float_model.graph.input]
        feeds = {n: x.numpy() for n, x in zip(names, transformer_models.example_inputs(arch))}

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([feeds] * 4)

            def get_next(self):
                return next(self.items, None)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    model = onnx.load(dst)
    analysis = onnxprune.analyze(model)
    assert {g.kind for g in analysis.groups if g.prunable} >= {"hidden", "head", "mlp"}
    want = onnxprune.prune(float_model, onnxprune.PruneConfig(ratio=0.5))
    got = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert got.verification is not None and got.verification.mask_equivalent is True
    assert_mask_equivalent(model, got.model, got.plan)
    assert interface(got.model) == interface(model)
    assert abs(got.report["macs_kept"] - want.report["macs_kept"]) <= 0.02
