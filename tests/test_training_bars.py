"""The fine-tuning bars of the project (slow): LeNet-5 (Caffe form) on the 5,000 MNIST images pruned by the
DropNet and Auto-Balanced schedules through the CLI, and label-free distillation of a pretrained third-party
model (PP-OCR text-orientation classifier)."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from conftest import needs

pytest.importorskip("torch", reason=needs("torch"))
pytest.importorskip("mlxtend", reason=needs("mlxtend"))

from conftest import ROOT  # noqa: E402

from onnxprune.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory):
    """LeNet-5 trained on 4,000 of the images with train.npz and val.npz: the files models/lenet5 ships
    (``python tools/build_lenet5.py --out models/lenet5`` rebuilds them byte for byte), copied to a temporary
    folder that also takes the outputs."""
    out = tmp_path_factory.mktemp("lenet5")
    for name in ("lenet5.onnx", "train.npz", "val.npz"):
        shutil.copy(ROOT / "models" / "lenet5" / name, out / name)
    return out


@pytest.mark.parametrize("schedule", ["dropnet", "auto-balanced"])
def test_lenet5_schedules_remove_90_percent_of_macs_within_one_point(lenet5, schedule):
    report = lenet5 / f"{schedule}.json"
    code = main([str(lenet5 / "lenet5.onnx"), "--ratio", "0.75", "--schedule", schedule,
                 "--data", str(lenet5 / "train.npz"), "--eval", str(lenet5 / "val.npz"),
                 "-o", str(lenet5 / f"{schedule}.onnx"), "--report", str(report), "-q"])
    assert code == 0
    doc = json.loads(report.read_text())
    before, after = doc["evaluation"]["before"]["accuracy"], doc["evaluation"]["after"]["accuracy"]
    assert before >= 0.97
    assert 1.0 - doc["macs_kept"] >= 0.90
    assert before - after <= 0.01
    assert doc["training"]["schedule"] == schedule and all(s["accepted"] for s in doc["training"]["steps"])


def test_label_free_distillation_recovers_90_percent_of_lost_fidelity():
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("pip install --no-deps -r tests/requirements-real-models.txt")
    import bench_label_free  # tools/ is on pytest's pythonpath (pyproject.toml)

    rows = bench_label_free.run(train_count=2000, val_count=1000, epochs=5)
    for row in rows:
        assert 0.45 <= row["macs_kept"] <= 0.55
    plain = rows[0]
    assert plain["agreement_pruned"] < 0.9  # pruning alone lost real fidelity
    assert plain["recovered"] >= 0.90
