"""Quantization as the last step of a prune run (``onnxprune MODEL --quantize static|dynamic``).

Prune and recover in float, then quantize the pruned model with onnxruntime's quantizer -- calibrated on the
*pruned and recovered* model, never the original:

* ``static``: ``quantize_static`` in the QDQ format with per-channel int8 weights and int8 activations, MinMax
  calibration over the ``--calib`` samples (what most deployment pipelines script by hand). int8 activations
  (onnxruntime's default, S8S8): with uint8 ones onnxruntime fuses QDQ into u8s8 kernels that saturate pairs
  of products on x86 CPUs without VNNI -- measured on the bundled MNIST model pruned at 0.5: 0.949 float,
  0.503 U8S8, 0.950 S8S8;
* ``dynamic``: ``quantize_dynamic`` (int8 weights, activations quantized at run time), for models without
  calibration data.

The quantized model is checked (onnx.checker full check, runs in onnxruntime, same interface; mask equivalence
does not apply: quantizing changes the values) and compared with the float pruned model on the evaluation data
(accuracy with labels, fidelity always) and timed against it (onnxruntime CPU, 1 thread). The report's
``quantization`` entry records the quantizer and its options, and the float-pruned and quantized evaluations.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate
from onnxprune.measure.runtime import quantization, runtime_version

__all__ = ["QUANTIZE_MODES", "check_not_quantized", "quantize_model", "quantize_result", "unrecovered_note"]

QUANTIZE_MODES = ("static", "dynamic")


def _reader(model: onnx.ModelProto, data: Dataset, samples: int) -> Any:
    from onnxprune.measure.calibrate import model_batches

    class Reader(quantization().CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{k: np.array(v, copy=True) for k, v in feeds.items()}  # batches reuse buffers
                               for feeds, _ in model_batches(model, data, 1, samples)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)
    return Reader()


def quantize_model(model: onnx.ModelProto, mode: str, calib: Dataset | None, *, samples: int = 128
                   ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` quantized by onnxruntime (``mode`` static or dynamic) and the options used, for the report."""
    q = quantization()
    ort_version = runtime_version()

    if mode not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {mode}: choose one of {', '.join(QUANTIZE_MODES)}")
    if mode == "static" and calib is None:
        raise UsageError("--quantize static calibrates on --calib samples: give --calib, or use --quantize dynamic")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "pruned.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, str(src))
        if mode == "static":
            assert calib is not None
            used = min(samples, len(calib))
            options = {"quantizer": f"onnxruntime.quantization.quantize_static (onnxruntime {ort_version})",
                       "format": "QDQ", "per_channel": True, "weight_type": "QInt8", "activation_type": "QInt8",
                       "calibrate_method": "MinMax", "calibration_samples": used}
            q.quantize_static(str(src), str(dst), _reader(model, calib, used), quant_format=q.QuantFormat.QDQ,
                            per_channel=True, weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QInt8,
                            calibrate_method=q.CalibrationMethod.MinMax)
        else:
            options = {"quantizer": f"onnxruntime.quantization.quantize_dynamic (onnxruntime {ort_version})",
                       "weight_type": "QInt8", "per_channel": False}
            q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8)
        quantized = onnx.load(str(dst))
    return quantized, {"mode": mode, **options}


def quantize_result(result: Any, original: onnx.ModelProto, mode: str, calib: Dataset | None,
                    eval_data: Dataset | None, *, batch_size: int = 32, seed: int = 0,
                    input_shapes: dict[str, list[int]] | None = None) -> Any:
    """A :class:`~onnxprune.pipeline.pruning.PruneResult` whose model is ``result.model`` quantized, checked
    (full checker, onnxruntime, interface) and evaluated; its report says how (``quantization``) and what the
    quantized model weighs (``after``)."""
    from onnxprune.core.graph import static_input_shapes
    from onnxprune.measure.stats import model_stats
    from onnxprune.rewriting.verify import verify
    from onnxprune.tuning.latency import compare_latency

    quantized, options = quantize_model(result.model, mode, calib)
    verify(result.model, quantized, None, seed=seed, input_shapes=input_shapes, mask_check=False)
    entry: dict[str, Any] = {"options": options, "verified": {"checker": True, "onnxruntime": True,
                                                              "interface_unchanged": True}}
    report = dict(result.report)
    shapes = static_input_shapes(original, input_shapes)
    before = report.get("before") or {}
    report["float_pruned"] = report.get("after")
    report["after"] = model_stats(quantized, shapes).to_dict()
    if before.get("params"):
        report["params_kept"] = report["after"]["params"] / before["params"]
    if eval_data is not None:
        entry["float_pruned"] = evaluate(result.model, eval_data, reference=original, batch_size=batch_size,
                                         label="evaluating float").to_dict()
        entry["quantized"] = evaluate(quantized, eval_data, reference=original, batch_size=batch_size,
                                      label="evaluating quantized").to_dict()
    timing = compare_latency(result.model, quantized, threads=1, input_shapes=input_shapes)
    entry["latency"] = {"provider": "CPUExecutionProvider", "threads": 1, "ms_float_pruned": timing.ms[0],
                        "ms_quantized": timing.ms[1], "ratio": timing.ratios[1], "stable": timing.stable}
    report["quantization"] = entry
    return replace(result, model=quantized, report=report)


def unrecovered_note(model: onnx.ModelProto, report: dict[str, Any]) -> str | None:
    """A note when recovery ran on a model whose quantized operators (QLinearConv, ConvInteger, ...) it cannot
    refit: their layers keep the accuracy of pruning alone."""
    from onnxprune.core.handlers import handler_for
    from onnxprune.ops.qoperator import QuantizedOp

    if (report.get("options") or {}).get("recover") in (None, "none") or not report.get("plan_tensors", True):
        return None
    ops = sorted({n.op_type for n in model.graph.node if isinstance(h := handler_for(n), QuantizedOp)
                  and h.float_op in ("Conv", "MatMul", "Gemm")})
    if not ops:
        return None
    return (f"onnxprune: note: recovery does not refit quantized operators ({', '.join(ops)}): their layers keep "
            "the accuracy of pruning alone; prune the QDQ form (or the float model) to recover them")


#: Ops that make a model quantized already (``--quantize`` would quantize its float parts again, or nothing).
_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                  "ConvInteger", "MatMulInteger", "QGemm", "MatMulNBits", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat")


def check_not_quantized(model: onnx.ModelProto, mode: str) -> None:
    """Refuse ``--quantize`` on a model that is quantized already (before any pruning work)."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in _QUANTIZED_OPS})
    if found:
        raise UsageError(f"--quantize {mode}: the model is quantized already ({', '.join(found[:3])}); "
                         "prune it without --quantize")
