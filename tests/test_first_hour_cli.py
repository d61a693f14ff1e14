"""The first hour (issue 13): what a new user sees. Every summary says what it did not establish; --device with
a torch that lacks it is a usage error; long runs say where they are, also when stderr is piped; help and JSON
show everything; common mistakes get one clear line and the right exit code."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT

from onnxprune.cli import main
from onnxprune.cli.format import format_bytes, format_epochs, format_sensitivity, format_summary, plural
from onnxprune.core.progress import Progress, note, progress_mode

MODELS = ROOT / "models"
MNIST, CALIB, VAL = MODELS / "mnist_resnet.onnx", MODELS / "mnist_calib.npz", MODELS / "mnist_val.npz"


@pytest.fixture
def model(tmp_path) -> Path:
    target = tmp_path / "mnist_resnet.onnx"
    shutil.copy(MNIST, target)
    return target


@pytest.fixture(scope="module")
def few(tmp_path_factory) -> Path:
    """200 labelled samples of the bundled validation set (quick to train and evaluate on)."""
    target = tmp_path_factory.mktemp("few") / "few.npz"
    with np.load(VAL) as data:
        np.savez(target, input=data["input"][:200], labels=data["labels"][:200])
    return target


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """The bundled model pruned at 0.5 (for fine-tuning and eval)."""
    target = tmp_path_factory.mktemp("small") / "small.onnx"
    assert main([str(MNIST), "-o", str(target), "-q"]) == 0
    return target


def _error(capsys, argv: list[str], code: int) -> str:
    """Run the CLI, expect ``code`` and exactly one line ``onnxprune: error: ...``; return it."""
    assert main(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), lines
    assert "internal error" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


def _needs_cpu_only_torch():
    torch = pytest.importorskip("torch", reason="the --device check needs torch (pip install 'onnxprune[torch]')")
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA: --device cuda is valid here")


# -- item 2: what a summary did and did not establish ---------------------------------------------------------------
def test_summary_says_accuracy_was_not_measured_and_calibration_would_help(model, capsys):
    report = model.parent / "r.json"
    assert main([str(model), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("onnxprune: note:")]
    assert len(notes) == 2, err
    assert "accuracy not measured" in notes[0] and "--eval DATA" in notes[0]
    assert "--calib DATA" in notes[1] and "9.7 % -> 96.7 %" in notes[1]
    assert json.loads(report.read_text())["established"] == {"verified": True, "accuracy": False,
                                                             "calibrated": False}
    assert main([str(model), "-q", "-o", str(model.parent / "q.onnx")]) == 0
    assert capsys.readouterr().err == ""


def test_summary_of_a_measured_calibrated_run_has_no_notes(model, few, capsys):
    report = model.parent / "r.json"
    assert main([str(model), "--calib", str(few), "--calib-samples", "64", "--eval", str(few),
                 "--report", str(report)]) == 0
    assert "note:" not in capsys.readouterr().err
    assert json.loads(report.read_text())["established"] == {"verified": True, "accuracy": True,
                                                             "calibrated": True}


# -- item 6: --device that torch cannot offer --------------------------------------------------------------------
def test_device_cuda_without_cuda_is_a_usage_error(small, capsys):
    _needs_cpu_only_torch()
    line = _error(capsys, ["finetune", str(small), "--data", str(CALIB), "--device", "cuda"], 2)
    assert "--device cuda" in line and "available: cpu" in line
    line = _error(capsys, [str(MNIST), "--schedule", "dropnet", "--data", str(CALIB), "--device", "cuda:1",
                           "-o", str(small.parent / "never.onnx")], 2)
    assert "--device cuda:1" in line and "available: cpu" in line
    assert not (small.parent / "never.onnx").exists()


# -- item 8: where a long run is --------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_plain_lines_when_piped_and_bars_on_a_terminal():
    piped, tty = io.StringIO(), _Tty()
    with progress_mode("lines"):
        for stream in (piped, tty):
            with Progress("work", 4, stream=stream) as bar:
                bar.advance(2)
                bar.note("step 1/2")
                bar.advance(2)
    assert piped.getvalue() == "onnxprune: step 1/2\n"  # no bar, no carriage return
    assert "onnxprune: step 1/2\n" in tty.getvalue() and "\r" in tty.getvalue() and "4/4" in tty.getvalue()
    quiet, library = _Tty(), io.StringIO()
    with progress_mode("off"):
        note("step 1/2", quiet)
    note("step 1/2", library)  # library use (no mode set): silent in a pipe, as before
    assert quiet.getvalue() == library.getvalue() == ""


def test_iterative_steps_say_where_they_are(model, capsys):
    assert main([str(model), "--schedule", "iterative", "--step", "0.3", "--ratio", "0.5", "--json"]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if "iterative step" in line]
    assert [s.split()[3] for s in steps] == ["1/2:", "2/2:"], err
    assert "\r" not in err
    assert main([str(model), "--schedule", "iterative", "--ratio", "0.5", "-q",
                 "-o", str(model.parent / "q.onnx")]) == 0
    assert capsys.readouterr().err == ""


def test_finetune_epochs_say_where_they_are_and_json_has_output_and_metric(small, few, tmp_path, capsys):
    pytest.importorskip("torch", reason="fine-tuning needs torch (pip install 'onnxprune[torch]')")
    out = tmp_path / "new" / "dir" / "tuned.onnx"
    assert main(["finetune", str(small), "--data", str(few), "--teacher", str(MNIST), "--eval", str(few),
                 "--epochs", "2", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert [line.split(": ")[2] for line in captured.err.splitlines() if "epoch" in line] == ["epoch 1/2",
                                                                                               "epoch 2/2"]
    doc = json.loads(captured.out)
    assert doc["command"] == "finetune" and doc["output"]["path"] == str(out) and out.exists()
    assert doc["input"] == {"path": str(small), "bytes": small.stat().st_size}  # the shape of prune's input
    assert doc["final"]["metric"] == "accuracy" and doc["final"]["value"] == doc["evaluation"]["accuracy"]


# -- item 9: help and JSON --------------------------------------------------------------------------------------
def test_top_level_help_shows_the_prune_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--ratio", "--calib", "--eval", "--target-macs", "--json"):
        assert option in out
    assert "inspect" in out and "finetune" in out


def test_python_dash_m_onnxprune():
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--ratio" in proc.stdout


def test_prune_json_has_the_common_head_and_the_latency(model, capsys):
    assert main([str(model), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "prune" and doc["input"] == {"path": str(model), "bytes": model.stat().st_size}
    assert doc["latency"] is None and doc["established"]["accuracy"] is False
    from onnxprune.cli.format import summary_document

    report = json.loads(json.dumps({**doc, "groups": [], "latency": {"ratio": 0.5, "candidates": [1, 2]}}))
    assert summary_document(report)["latency"] == {"ratio": 0.5}  # what the text prints, not every candidate


def test_eval_shows_the_references_accuracy(small, few, capsys):
    assert main(["eval", str(small), "--data", str(VAL), "--reference", str(MNIST)]) == 0
    assert "reference top-1 accuracy: 0.9810" in capsys.readouterr().out  # the README's 98.1 %
    assert main(["eval", str(small), "--data", str(few), "--reference", str(MNIST), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "eval" and doc["input"] == {"path": str(small), "bytes": small.stat().st_size}
    assert doc["reference"]["path"] == str(MNIST) and 0.9 < doc["reference"]["accuracy"] <= 1.0


# -- item 10: messages ------------------------------------------------------------------------------------------
def test_mistyped_command(capsys):
    line = _error(capsys, ["prnue", str(MNIST)], 2)
    assert "no such command 'prnue'" in line and "did you mean 'prune'" in line


def test_mistyped_option_suggests_the_closest(capsys):
    line = _error(capsys, [str(MNIST), "--ratoi", "0.3"], 2)
    assert "'--ratoi'" in line and "did you mean '--ratio'" in line and "--data" not in line


@pytest.mark.parametrize("option", ["--target-macs", "--target-params"])
def test_budget_out_of_range_names_the_option(capsys, option):
    line = _error(capsys, [str(MNIST), option, "1.4"], 2)
    assert f"{option} must be in (0, 1]" in line


def test_counts_and_sizes_read_right():
    assert plural(1, "group") == "1 group" and plural(0, "group") == "0 groups" and plural(2, "epoch") == "2 epochs"
    assert format_bytes(313538) == "306.2 KiB" and format_bytes(5 << 20) == "5.0 MiB" and format_bytes(12) == "12 B"
    stats = {"params": 10, "macs": 10, "bytes": 313538}
    text = format_summary({"before": stats, "after": stats, "groups": [], "verification": None,
                           "latency": {"ms_original": 1, "ms_pruned": 1, "ratio": 1, "threads": 1}})
    assert "306.2 KiB" in text and "kB" not in text and "1 thread)" in text

    class _Sens:  # the shape format_sensitivity reads
        fractions = (0.5,)
        rows = [{"id": 0, "size": 4, "sources": ["/a"]}]
        latency = {"provider": "CPUExecutionProvider", "threads": 1, "ms_original": 0.1, "groups_not_timed": []}

    text = format_sensitivity(_Sens())  # type: ignore[arg-type]
    assert "(1 group not prunable" in text and "1 thread," in text and "not timed" not in text

    class _Run:
        history = [{"epoch": 0, "loss": None, "eval": None}, {"epoch": 1, "loss": 0.5, "eval": None}]

    assert format_epochs(_Run()) == ["  epoch 0", "  epoch 1, loss 0.5000"]  # type: ignore[arg-type]


def test_plan_errors_are_usage_errors(model, capsys):
    plan = model.parent / "p.json"
    assert main([str(model), "-q", "--plan", str(plan), "-o", str(model.parent / "a.onnx")]) == 0
    doc = json.loads(plan.read_text())
    doc["tensors"][0]["size"] = 99  # a plan for another model
    plan.write_text(json.dumps(doc))
    line = _error(capsys, ["apply", str(model), "--plan", str(plan), "-o", str(model.parent / "b.onnx")], 2)
    assert "does not match the model" in line
    plan.write_text("{")
    assert "not valid JSON" in _error(capsys, ["apply", str(model), "--plan", str(plan)], 2)


def test_external_data_file_given_as_the_model(tmp_path, capsys):
    onnx.save(onnx.load(MNIST), tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    line = _error(capsys, [str(tmp_path / "ext.onnx.data")], 2)
    assert "is the external data of a model: pass the .onnx file" in line and "ext.onnx'" in line
    _error(capsys, ["inspect", str(tmp_path / "ext.onnx.data")], 2)


def test_output_folders_are_created(model, capsys):
    out, report = model.parent / "some" / "new" / "dir" / "model.onnx", model.parent / "new" / "dir" / "r.json"
    assert main([str(model), "-o", str(out), "--report", str(report), "-q"]) == 0
    assert out.exists() and json.loads(report.read_text())["output"]["path"] == str(out)


def test_output_folders_are_removed_when_the_command_fails(model, capsys):
    out = model.parent / "fresh" / "model.onnx"
    _error(capsys, [str(model), "-o", str(out), "--calib", str(model.parent / "missing.npz")], 2)
    assert not (model.parent / "fresh").exists()
