"""Quantized models pruned at --ratio 0.5: onnxprune beside onnxsim 0.8.1, one run, table in
tools/results/quantized.md.

For each model (the bundled MNIST ResNet; torchvision resnet18 / mobilenet_v2 / efficientnet_b0 exports with
``--tv-dir``, built by ``tools/torchvision_models.py --out-dir DIR``) and each form onnxruntime's quantizer
writes (static QDQ with per-channel weights, static QOperator with per-channel weights, dynamic):

* onnxprune: ``onnxprune.prune(model, PruneConfig(ratio=0.5))`` -- MACs kept (onnxprune's counter, the same for
  every column), beside the float model pruned the same way; valid = onnx.checker full check, runs in
  onnxruntime, same interface, mask-exact (the library's verification; conftest's oracle in the tests);
Quantized by onnxruntime after its ``quant_pre_process`` (per-channel weights for the static forms).

* onnxsim 0.8.1: ``apply_structured_pruning_qdq`` / ``apply_structured_pruning_qoperator`` /
  ``apply_structured_pruning_dynamic_quantize_conv`` at sparsity 0.5 -- MACs kept and whether the output passes
  the full check, runs in onnxruntime and keeps the interface.

With the MNIST model, ``--accuracy`` adds the accuracy of the float and QDQ models pruned with ``--calib`` (the
CLI, 1000 held-out samples). Usage::

    python tools/bench_quantized.py [--tv-dir /tmp/tv] [--accuracy] [--out tools/results/quantized.md]
"""
from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

import onnxprune
from onnxprune.core.graph import static_input_shapes
from onnxprune.measure.macs import count_macs

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_resnet.onnx"
CALIB, VAL = ROOT / "models" / "mnist_calib.npz", ROOT / "models" / "mnist_val.npz"
RATIO = 0.5
FORMS = ("qdq", "qoperator", "dynamic")
ONNXSIM = {"qdq": "apply_structured_pruning_qdq", "qoperator": "apply_structured_pruning_qoperator",
           "dynamic": "apply_structured_pruning_dynamic_quantize_conv"}


class _Reader(CalibrationDataReader):
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def _samples(model: onnx.ModelProto, count: int = 16) -> list[dict[str, np.ndarray]]:
    name = model.graph.input[0].name
    if model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1:  # the MNIST model: real digits
        return [{name: x[None]} for x in np.load(CALIB)["input"][:count]]
    shape = static_input_shapes(model)[name]
    rng = np.random.default_rng(0)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def quantize(src: Path, form: str, out_dir: Path) -> Path:
    """``src`` pre-processed (``quant_pre_process``, as onnxruntime recommends: without it its QOperator quantizer
    raises on efficientnet_b0) and quantized by onnxruntime in ``form`` (static: per-channel weights, calibrated
    on 16 samples)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = out_dir / f"{src.stem}.{form}.onnx"
    pre = out_dir / f"{src.stem}.pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    src = pre
    if form == "dynamic":
        quantize_dynamic(str(src), str(dst))
    else:
        fmt = QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator
        quantize_static(str(src), str(dst), _Reader(_samples(onnx.load(str(src)))), quant_format=fmt,
                        per_channel=True)
    return dst


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> str:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - a failed check is the result
        return f"checker: {str(exc).splitlines()[0][:80]}"
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {str(exc).splitlines()[0][:80]}"
    return "ok"


def _interface(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    inits = {t.name for t in model.graph.initializer}
    return [(vi.name, vi.type.SerializeToString()) for vi in list(model.graph.input) + list(model.graph.output)
            if vi.name not in inits]


def run_onnxprune(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    except onnxprune.OnnxPruneError as exc:
        return {"status": f"error: {exc}"}
    v = result.verification
    valid = v is not None and v.mask_equivalent is True and _interface(result.model) == _interface(model)
    return {"status": "valid, mask-exact" if valid else "NOT verified", "seconds": time.perf_counter() - t0,
            "macs": count_macs(result.model, shapes)[0], "bytes": result.model.ByteSize()}


def run_onnxsim(model: onnx.ModelProto, form: str, shapes: dict[str, list[int]],
                feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        import onnxsim
    except ImportError:
        return {"status": "not installed"}
    t0 = time.perf_counter()
    try:
        pruned = getattr(onnxsim, ONNXSIM[form])(copy.deepcopy(model), sparsity=RATIO)
    except Exception as exc:  # noqa: BLE001 - a peer raising is the result
        return {"status": f"raised: {str(exc).splitlines()[0][:80]}"}
    seconds = time.perf_counter() - t0
    if pruned.SerializeToString() == model.SerializeToString():
        return {"status": "declined", "macs": count_macs(model, shapes)[0], "seconds": seconds}
    status = _runs(pruned, feeds)
    if status == "ok":
        status = "valid" if _interface(pruned) == _interface(model) else "interface changed"
    return {"status": status, "macs": count_macs(pruned, shapes)[0], "seconds": seconds,
            "bytes": pruned.ByteSize()}


def bench_model(src: Path, work: Path) -> list[dict[str, Any]]:
    float_model = onnx.load(str(src))
    shapes = static_input_shapes(float_model)
    feeds = {k: v for k, v in _samples(float_model, 1)[0].items()}
    base = count_macs(float_model, shapes)[0]
    pruned_float = onnxprune.prune(float_model, onnxprune.PruneConfig(ratio=RATIO)).model
    float_kept = count_macs(pruned_float, shapes)[0] / base
    rows = []
    for form in FORMS:
        try:
            model = onnx.load(str(quantize(src, form, work)))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer refusing a model is a result too
            print(f"{src.stem:>16} {form:>9}: onnxruntime's quantizer failed: {exc!r:.100}", flush=True)
            rows.append({"model": src.stem, "form": form, "failed": f"quantizer raised {type(exc).__name__}"})
            continue
        q_base = count_macs(model, shapes)[0]
        mine, peer = run_onnxprune(model, shapes), run_onnxsim(model, form, shapes, feeds)
        rows.append({"model": src.stem, "form": form, "float_kept": float_kept, "base_ratio": q_base / base,
                     "mine": mine, "peer": peer, "q_base": q_base, "size": model.ByteSize()})
        print(f"{src.stem:>16} {form:>9}: onnxprune {mine.get('macs', 0) / q_base:.3f} ({mine['status']}), "
              f"float {float_kept:.3f}, onnxsim {peer.get('macs', q_base) / q_base:.3f} ({peer['status']})",
              flush=True)
    return rows


def accuracy(model: Path) -> tuple[float, float] | None:
    """(original, pruned) accuracy from the CLI with --calib and --eval at the bench ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "onnxprune", str(model), "--ratio", str(RATIO), "--calib",
                               str(CALIB), "--eval", str(VAL), "-o", str(Path(tmp) / "out.onnx")],
                              capture_output=True, text=True, check=False)
    found = re.search(r"accuracy: ([0-9.]+) -> ([0-9.]+)", done.stderr)
    return (float(found.group(1)), float(found.group(2))) if found else None


def quantize_run() -> dict[str, Any] | None:
    """The MNIST model through ``--ratio 0.5 --calib --eval --quantize static``: the report's numbers."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        out, report = Path(tmp) / "out.onnx", Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "onnxprune", str(MNIST), "--ratio", str(RATIO), "--calib", str(CALIB),
                        "--eval", str(VAL), "--quantize", "static", "-o", str(out), "--report", str(report)],
                       capture_output=True, text=True, check=False)
        if not report.exists():
            return None
        data = json.loads(report.read_text())
        q = data["quantization"]
        return {"size": out.stat().st_size / MNIST.stat().st_size, "original": data["evaluation"]["before"]["accuracy"],
                "float": q["float_pruned"]["accuracy"], "quantized": q["quantized"]["accuracy"],
                "ms_float": q["latency"]["ms_float_pruned"], "ms_quantized": q["latency"]["ms_quantized"]}


def table(rows: list[dict[str, Any]], acc: dict[str, tuple[float, float] | None],
          quant: dict[str, Any] | None = None) -> str:
    lines = ["# Quantized models pruned at --ratio 0.5: onnxprune beside onnxsim 0.8.1", "",
             "Written by `python tools/bench_quantized.py" + (" --tv-dir DIR" if len({r['model'] for r in rows}) > 1
                                                              else "") + "` (one run). MACs counted by onnxprune's "
             "counter for every column (QLinearConv, ConvInteger, MatMulNBits... included), as a fraction of the "
             "quantized model's; *float* is the float model pruned by onnxprune at the same ratio. *valid*: "
             "onnx.checker full check, runs in onnxruntime, same interface; onnxprune's results are also "
             "mask-exact (max relative error 0 against the masked original).", "",
             "| model | form | MACs (quantized / float) | onnxprune MACs kept | float model kept | onnxprune "
             "result | onnxprune s | onnxsim MACs kept | onnxsim result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['form']} | - | - | - | onnxruntime's {r['failed']} | - | - | - |")
            continue
        mine, peer = r["mine"], r["peer"]
        mk = f"{mine['macs'] / r['q_base']:.3f}" if "macs" in mine else "-"
        pk = f"{peer['macs'] / r['q_base']:.3f}" if "macs" in peer else "-"
        lines.append(f"| {r['model']} | {r['form']} | {r['base_ratio']:.3f} | {mk} | {r['float_kept']:.3f} | "
                     f"{mine['status']} | {mine.get('seconds', 0):.1f} | {pk} | {peer['status']} |")
    if acc:
        lines += ["", "Accuracy with `--calib models/mnist_calib.npz --eval models/mnist_val.npz` at --ratio 0.5 "
                  "(1000 held-out digits):", "", "| model | original | pruned |", "|---|---|---|"]
        for name, value in acc.items():
            lines.append(f"| {name} | " + (f"{value[0]:.3f} | {value[1]:.3f} |" if value else "failed | |"))
    if quant:
        lines += ["", "`onnxprune models/mnist_resnet.onnx --ratio 0.5 --calib models/mnist_calib.npz --eval "
                  "models/mnist_val.npz --quantize static` (prune with the `obs` criterion, least-squares recovery, "
                  "then onnxruntime's static QDQ per-channel quantizer calibrated on the pruned model):", "",
                  "| file vs original | accuracy original | float pruned | quantized | latency float pruned | "
                  "latency quantized |", "|---|---|---|---|---|---|",
                  f"| {quant['size']:.3f}x | {quant['original']:.3f} | {quant['float']:.3f} | "
                  f"{quant['quantized']:.3f} | {quant['ms_float']:.3f} ms | {quant['ms_quantized']:.3f} ms |", "",
                  "Latency: onnxruntime CPU, 1 thread, batch 1, median of side-by-side rounds (a 9 MMAC model: the "
                  "quantize/dequantize steps cost more than the int8 arithmetic saves)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tv-dir", type=Path, help="folder with resnet18/mobilenet_v2/efficientnet_b0 .onnx exports")
    ap.add_argument("--accuracy", action="store_true", help="MNIST accuracy, float and QDQ, pruned with --calib")
    ap.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "quantized.md")
    args = ap.parse_args(argv)
    sources = [MNIST]
    if args.tv_dir:
        sources += [args.tv_dir / f"{a}.onnx" for a in ("resnet18", "mobilenet_v2", "efficientnet_b0")
                    if (args.tv_dir / f"{a}.onnx").exists()]
    rows: list[dict[str, Any]] = []
    acc: dict[str, tuple[float, float] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            rows += bench_model(src, Path(tmp))
        if args.accuracy:
            acc["mnist_resnet (float)"] = accuracy(MNIST)
            acc["mnist_resnet (QDQ per-channel)"] = accuracy(quantize(MNIST, "qdq", Path(tmp)))
    quant = quantize_run() if args.accuracy else None
    text = table(rows, acc, quant)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
