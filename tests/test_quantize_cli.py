"""``--quantize static|dynamic``: prune, recover, then quantize with onnxruntime's quantizer; the quantized model
is checked, and the report records the quantizer's options and the float-pruned and quantized accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import EXAMPLE_MODEL, random_feeds, run_ort

from onnxprune.cli import main

pytest.importorskip("onnxruntime.quantization")
MODELS = Path(EXAMPLE_MODEL).parent


def test_static_quantization_ends_a_calibrated_prune(example_model, capfd):
    """--ratio 0.5 --calib --quantize static on the bundled MNIST ResNet: a QDQ model with per-channel int8
    weights, under 0.30x the original file, as accurate as the float pruned model (within 2 points)."""
    d = example_model.parent
    out, report_path = d / "out.onnx", d / "report.json"
    argv = [str(example_model), "--ratio", "0.5", "--calib", str(MODELS / "mnist_calib.npz"), "--eval",
            str(MODELS / "mnist_val.npz"), "--quantize", "static", "-o", str(out), "--report", str(report_path)]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "quantized: int8 static QDQ, per-channel weights" in err
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert out.stat().st_size <= 0.30 * example_model.stat().st_size
    report = json.loads(report_path.read_text())
    entry = report["quantization"]
    assert entry["options"]["mode"] == "static" and entry["options"]["per_channel"] is True
    assert entry["options"]["format"] == "QDQ" and entry["options"]["calibration_samples"] > 0
    assert abs(entry["quantized"]["accuracy"] - entry["float_pruned"]["accuracy"]) <= 0.02
    assert entry["latency"]["ms_quantized"] > 0 and entry["latency"]["ms_float_pruned"] > 0
    assert report["after"]["params_by_type"]["int8"] > report["after"]["params_by_type"]["float"]
    original = onnx.load(example_model)
    feeds = random_feeds(original)
    assert run_ort(model, feeds)[0].shape == run_ort(original, feeds)[0].shape


def test_dynamic_quantization_needs_no_data(example_model, capfd):
    out = example_model.parent / "dyn.onnx"
    assert main([str(example_model), "--ratio", "0.5", "--quantize", "dynamic", "-o", str(out)]) == 0
    assert "quantized: int8 dynamic" in capfd.readouterr().err
    assert "ConvInteger" in {n.op_type for n in onnx.load(out).graph.node}


def test_static_quantization_without_calibration_data_is_a_usage_error(example_model, capfd):
    out = example_model.parent / "x.onnx"
    assert main([str(example_model), "--ratio", "0.5", "--quantize", "static", "-o", str(out)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["onnxprune: error: --quantize static calibrates on --calib samples: give --calib, or use "
                   "--quantize dynamic"]
    assert not out.exists()


def test_quantized_operators_prune_with_calibration_and_say_recovery_skips_them(example_model, capfd):
    """A QOperator model pruned with --calib: its QLinearConv/QGemm layers cannot be refitted (the run used to end
    in an onnxruntime error when no consumer was refittable); the summary says so in one note."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[None]} for x in np.load(MODELS / "mnist_calib.npz")["input"][:8]])

        def get_next(self):
            return next(self.items, None)

    qop = example_model.parent / "qop.onnx"
    quantize_static(str(example_model), str(qop), Reader(), quant_format=QuantFormat.QOperator, per_channel=True)
    out = example_model.parent / "out.onnx"
    assert main([str(qop), "--ratio", "0.5", "--calib", str(MODELS / "mnist_calib.npz"), "-o", str(out)]) == 0
    err = capfd.readouterr().err
    assert "onnxprune: note: recovery does not refit quantized operators (QGemm, QLinearConv)" in err
    assert "QLinearConv" in {n.op_type for n in onnx.load(out).graph.node}


def test_quantizing_a_quantized_model_is_a_usage_error(example_model, capfd):
    from onnxruntime.quantization import quantize_dynamic

    dyn = example_model.parent / "dyn.onnx"
    quantize_dynamic(str(example_model), str(dyn))
    out = example_model.parent / "x.onnx"
    assert main([str(dyn), "--ratio", "0.5", "--quantize", "dynamic", "-o", str(out)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: --quantize dynamic: the model is quantized already")
    assert not out.exists()
