"""Every command that holds a model's weights refuses, in one line and before any work, a model whose estimated
need exceeds the memory available: prune (verify, calibrate, the training schedules), analyze and finetune."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from conftest import ROOT

from onnxprune.cli.app import main
from onnxprune.pipeline import resources

MODEL = ROOT / "models" / "mnist_resnet.onnx"
DATA = ROOT / "models" / "mnist_calib.npz"


@pytest.fixture
def no_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 20)


@pytest.mark.parametrize("command", [
    ["analyze", str(MODEL), "--data", str(DATA), "-o", "{tmp}/analysis"],
    ["finetune", str(MODEL), "--data", str(DATA), "--teacher", str(MODEL), "-o", "{tmp}/tuned.onnx"],
])
def test_commands_refuse_a_model_that_cannot_fit(command: list[str], tmp_path: Path, no_memory: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch") if command[0] == "finetune" else None
    assert main([c.replace("{tmp}", str(tmp_path)) for c in command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: ") and "needs about" in err[0], err
    assert ("to train" if command[0] == "finetune" else "to analyse") in err[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_training_needs_more_than_verifying() -> None:
    model = onnx.load(MODEL)
    need = {mode: resources.estimate_need(model, mode) for mode in ("none", "verify", "calib", "analyze", "train")}
    assert need["none"] < need["verify"] < need["calib"] <= need["analyze"] < need["train"]
    resources.check_fits(model, "m.onnx", "train", available=1 << 40, beside=model)  # fits: no error
    with pytest.raises(resources.MemoryNeedError, match="to train"):
        resources.check_fits(model, "m.onnx", "train", available=need["train"] + 1, beside=model)  # the teacher
