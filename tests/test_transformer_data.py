"""Text models: integer token inputs get valid ids for verification and MAC counting, and ``--calib``/``--eval``
take ``.npz`` files holding the model's integer inputs (on the hand-built encoder of builders.tiny_transformer)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from builders import tiny_transformer

import onnxprune
from onnxprune.cli.app import main
from onnxprune.measure.data import load_data

ROOT = Path(__file__).resolve().parents[1]


def _ids(path, n: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, ids=rng.integers(0, 10, (n, 5)).astype(np.int64))


def test_token_ids_are_valid_for_verification():
    model = tiny_transformer(layers=2, vocab=10)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert result.report["before"]["macs"] > 0 and result.report["macs_kept"] < 0.3


def test_calib_and_eval_take_integer_npz(tmp_path):
    model_path, data = tmp_path / "enc.onnx", tmp_path / "ids.npz"
    model_path.write_bytes(tiny_transformer(layers=2, vocab=10).SerializeToString())
    _ids(data)
    report = tmp_path / "r.json"
    assert main([str(model_path), "--ratio", "0.3", "--calib", str(data), "--eval", str(data),
                 "--report", str(report), "-q"]) == 0
    r = json.loads(report.read_text())
    assert r["established"]["calibrated"] is True
    assert r["options"]["criterion"] == "obs" and r["options"]["recover"] == "lstsq"
    assert r["evaluation"]["after"]["samples"] == 24 and r["evaluation"]["after"]["cosine"] is not None


def test_recovery_repairs_transformer_projections(tmp_path):
    """Least squares refits every MatMul per token (with the bias of the Add after it), bias compensation
    folds the removed features' means into those Adds: both bring the cut encoder closer to the original."""
    model = tiny_transformer(layers=2, vocab=10)
    path = tmp_path / "ids.npz"
    _ids(path, n=64)
    data = load_data(path, model)
    cosine = {}
    for recover in ("none", "bias", "lstsq"):
        config = onnxprune.PruneConfig(ratio=0.3, criterion="l2", recover=recover)
        result = onnxprune.prune(model, config, calib=data, eval_data=data)
        cosine[recover] = result.report["evaluation"]["after"]["cosine"]
    assert cosine["lstsq"] > cosine["bias"] > cosine["none"] and cosine["lstsq"] > 0.7, cosine


def test_a_legacy_export_with_a_dynamic_batch_prunes_every_kind():
    """The bundled ViT-MNIST (legacy exporter, dynamic batch): its reshape shapes are built from Shape(x) at run
    time (the batch, the channel count, -1 for the heads); heads, MLP and hidden width all prune, exactly."""
    model = onnxprune.load(ROOT / "models" / "vit_mnist" / "vit_mnist.onnx")
    groups = onnxprune.analyze(model).groups
    assert [g.blocked for g in groups if g.blocked] == ["reaches graph output 'logits'"]
    assert {g.kind for g in groups} == {"hidden", "head", "mlp"}
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert result.report["macs_kept"] < 0.3


def test_a_pruned_legacy_export_prunes_again():
    """Pruning a pruned model (an iterative schedule does): the head counts written into the computed reshape
    shapes stay readable (a copy of the shape's Concat with the new constant, not a ScatterElements), and the flatten
    that reads the tensor's own size is left to follow the cut, so every kind stays prunable the second time."""
    model = onnxprune.load(ROOT / "models" / "vit_mnist" / "vit_mnist.onnx")
    first = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    producers = {o: n.op_type for n in first.graph.node for o in n.output}
    reshapes = [producers.get(n.input[1]) for n in first.graph.node if n.op_type == "Reshape"]
    assert "ScatterElements" not in reshapes and "Concat" in reshapes
    groups = onnxprune.analyze(first).groups
    assert [g.blocked for g in groups if g.blocked] == ["reaches graph output 'logits'"]
    second = onnxprune.prune(first, onnxprune.PruneConfig(ratio=0.3))
    assert second.verification is not None and second.verification.mask_equivalent is True
    assert second.report["macs_kept"] < 0.75
