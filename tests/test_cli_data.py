"""The command line with data: ``--calib``/``--eval`` on the bundled MNIST files, ``onnxprune eval``, image
folders with preprocessing flags or a spec file, and the usage errors of data options (exit code, one line,
nothing written)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE_MODEL, interface, write_mnist_pngs

import onnxprune
from onnxprune.cli import main
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate

MODELS = EXAMPLE_MODEL.parent
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
GREY = ["--color", "L", "--mean", str(MNIST_MEAN), "--std", str(MNIST_STD)]


def _copy_bundle(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in (("model", "mnist_resnet.onnx"), ("calib", "mnist_calib.npz"), ("val", "mnist_val.npz")):
        paths[key] = directory / name
        paths[key].write_bytes((MODELS / name).read_bytes())
    return paths


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_fails(argv: list, directory: Path, code: int | None = None, contains: str | None = None) -> str:
    """Nonzero exit (``code`` if given), exactly one ``onnxprune: error:`` line, no files touched."""
    before = _snapshot(directory)
    got, out, err = _run(argv)
    assert got != 0 if code is None else got == code, (got, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxprune: error: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    if contains is not None:
        assert contains.lower() in lines[0].lower(), lines[0]
    assert _snapshot(directory) == before, "files changed"
    return lines[0]


# -- prune with --calib and --eval (run once) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``onnxprune MODEL --calib calib.npz --eval val.npz --ratio 0.3`` with the default criterion and recovery."""
    paths = _copy_bundle(tmp_path_factory.mktemp("cli"))
    report = paths["model"].with_name("report.json")
    plan = paths["model"].with_name("plan.json")
    originals = {k: p.read_bytes() for k, p in paths.items()}
    code, out, err = _run([paths["model"], "--ratio", "0.3", "--calib", paths["calib"], "--eval", paths["val"],
                           "--report", report, "--plan", plan])
    assert code == 0, err
    assert {k: p.read_bytes() for k, p in paths.items()} == originals, "inputs modified"
    return paths, paths["model"].with_name("mnist_resnet.pruned.onnx"), err, json.loads(report.read_text()), plan


def test_calib_writes_a_valid_model(pruned):
    paths, output, _, report, plan = pruned
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    assert interface(model) == interface(onnx.load(paths["model"]))
    assert report["options"]["criterion"] == "obs" and report["options"]["recover"] == "lstsq"
    assert report["verification"]["mask_equivalent"] is None
    assert report["macs_kept"] < 0.75
    assert report["output"]["path"] == str(output)
    assert json.loads(plan.read_text())["format"] == "onnxprune.plan/1"


def test_calib_summary_mentions_accuracy(pruned):
    _, _, err, report, _ = pruned
    assert "Traceback" not in err
    before, after = report["evaluation"]["before"], report["evaluation"]["after"]
    assert before["accuracy"] == pytest.approx(0.981, abs=0.005)
    assert after["accuracy"] >= 0.95 and after["agreement"] >= 0.95
    assert f"accuracy: {before['accuracy']:.4f} -> {after['accuracy']:.4f} (1000 samples)" in err
    assert "fidelity: top-1 agreement" in err
    assert "mask equivalence not applicable" in err


def test_eval_prints_accuracy(pruned):
    paths, output, _, report, _ = pruned
    code, out, err = _run(["eval", output, "--data", paths["val"]])
    assert code == 0, err
    assert "samples: 1000" in out
    assert f"top-1 accuracy: {report['evaluation']['after']['accuracy']:.4f}" in out
    assert "agreement" not in out


def test_eval_with_reference_prints_agreement(pruned):
    paths, output, _, report, _ = pruned
    code, out, err = _run(["eval", output, "--data", paths["val"], "--reference", paths["model"]])
    assert code == 0, err
    after = report["evaluation"]["after"]
    assert f"top-1 agreement with reference: {after['agreement']:.4f}" in out
    assert "cosine similarity to reference" in out and "relative error to reference" in out


def test_eval_json(pruned):
    paths, output, _, report, _ = pruned
    code, out, err = _run(["eval", output, "--data", paths["val"], "--reference", paths["model"], "--json",
                           "--limit", "200"])
    assert code == 0, err
    result = json.loads(out)
    assert {"samples", "accuracy", "agreement", "cosine", "rel_error"} <= set(result)
    assert result["command"] == "eval" and result["reference"]["accuracy"] >= 0.9
    assert result["samples"] == 200
    assert 0.9 <= result["accuracy"] <= 1.0 and 0.9 <= result["agreement"] <= 1.0
    # the reference against itself: perfect fidelity
    code, out, _ = _run(["eval", paths["model"], "--data", paths["val"], "--reference", paths["model"], "--json",
                         "--limit", "100"])
    same = json.loads(out)
    assert code == 0 and same["agreement"] == 1.0 and same["cosine"] == pytest.approx(1.0)
    assert same["rel_error"] == pytest.approx(0.0, abs=1e-6)


def test_eval_without_calib(tmp_path):
    """--eval alone: l2 without recovery, mask-equivalent, accuracy in the summary."""
    paths = _copy_bundle(tmp_path)
    code, _, err = _run([paths["model"], "--ratio", "0.3", "--eval", paths["val"], "--report",
                         tmp_path / "r.json"])
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["criterion"] == "l2" and report["options"]["recover"] == "none"
    assert report["verification"]["mask_equivalent"] is True
    assert "accuracy: 0.9810 -> " in err and "mask-equivalent" in err


# -- usage errors --------------------------------------------------------------------------------------------------
@pytest.fixture
def bundle(tmp_path) -> dict[str, Path]:
    return _copy_bundle(tmp_path)


@pytest.mark.parametrize("flags,contains", [
    (["--criterion", "mean-act"], "calib"),
    (["--criterion", "wanda"], "calib"),
    (["--recover", "lstsq"], "calib"),
    (["--recover", "bias"], "calib"),
])
def test_data_options_without_calib(bundle, flags, contains):
    _assert_fails([bundle["model"], *flags], bundle["model"].parent, 2, contains)


@pytest.mark.parametrize("step", ["1.5", "0", "1", "-0.2"])
def test_bad_step(bundle, step):
    _assert_fails([bundle["model"], "--calib", bundle["calib"], "--schedule", "iterative", "--step", step],
                  bundle["model"].parent, 2, "--step")


@pytest.mark.parametrize("flags", [["--calib-samples", "0"], ["--batch-size", "0"]])
def test_bad_sample_counts(bundle, flags):
    _assert_fails([bundle["model"], "--calib", bundle["calib"], *flags], bundle["model"].parent, 2)


def test_missing_calib_path(bundle):
    line = _assert_fails([bundle["model"], "--calib", bundle["model"].parent / "nope.npz"],
                         bundle["model"].parent, contains="does not exist")
    assert "nope.npz" in line


def test_missing_eval_path(bundle):
    _assert_fails([bundle["model"], "--eval", bundle["model"].parent / "nope.npz"], bundle["model"].parent,
                  contains="nope.npz")
    _assert_fails(["eval", bundle["model"], "--data", bundle["model"].parent / "nope.npz"],
                  bundle["model"].parent, contains="nope.npz")


def test_npz_without_the_input_name(bundle):
    with np.load(bundle["calib"]) as a:
        x = a["input"][:8]
    bad = bundle["model"].parent / "bad.npz"
    np.savez(bad, images=x, masks=x)
    line = _assert_fails([bundle["model"], "--calib", bad], bundle["model"].parent, contains="input")
    assert "bad.npz" in line and "images" in line
    _assert_fails(["eval", bundle["model"], "--data", bad], bundle["model"].parent, contains="input")


@pytest.mark.parametrize("case,contains", [("dtype", "float32"), ("rank", "rank"), ("labels", "labels"),
                                           ("suffix", ".npz")])
def test_bad_calib_file(bundle, case, contains):
    with np.load(bundle["calib"]) as a:
        x, y = a["input"][:8], a["labels"][:8]
    bad = bundle["model"].parent / ("bad.txt" if case == "suffix" else "bad.npz")
    if case == "dtype":
        np.savez(bad, input=x.astype(np.float16))
    elif case == "rank":
        np.savez(bad, input=x[:, 0])
    elif case == "labels":
        np.savez(bad, input=x, labels=y[:3])
    else:
        bad.write_text("0 1 2\n")
    _assert_fails([bundle["model"], "--calib", bad], bundle["model"].parent, 2, contains)


def test_preprocess_unknown_key(bundle):
    root = bundle["model"].parent
    write_mnist_pngs(root / "imgs", per_class=1)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"color": "L", "normalize": True}))
    _assert_fails([bundle["model"], "--calib", root / "imgs", "--preprocess", spec], root, 2, "normalize")
    _assert_fails(["eval", bundle["model"], "--data", root / "imgs", "--preprocess", spec], root, 2, "normalize")


def test_bad_image_flags(bundle):
    root = bundle["model"].parent
    write_mnist_pngs(root / "imgs", per_class=1)
    _assert_fails(["eval", bundle["model"], "--data", root / "imgs", "--mean", "a,b"], root, 2, "numbers")
    _assert_fails(["eval", bundle["model"], "--data", root / "imgs", "--size", "axb"], root, 2, "--size")
    _assert_fails(["eval", bundle["model"], "--data", root / "imgs", "--color", "CMYK"], root, 2)


# -- image folders -------------------------------------------------------------------------------------------------
def test_image_folder_calibration(bundle):
    root = bundle["model"].parent
    want_x, want_y = write_mnist_pngs(root / "imgs")
    out = root / "small.onnx"
    code, _, err = _run([bundle["model"], "--calib", root / "imgs", *GREY, "--ratio", "0.3", "-o", out,
                         "--eval", root / "imgs", "--report", root / "r.json"])
    assert code == 0, err
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert interface(model) == interface(onnx.load(bundle["model"]))
    report = json.loads((root / "r.json").read_text())
    assert report["options"]["recover"] == "lstsq"
    original = onnxprune.load(bundle["model"])
    want = evaluate(original, Dataset({"input": want_x}, want_y)).accuracy
    assert report["evaluation"]["before"]["samples"] == 20
    assert report["evaluation"]["before"]["accuracy"] == pytest.approx(want)
    assert "accuracy:" in err


def test_image_folder_eval_matches_arrays(bundle):
    root = bundle["model"].parent
    want_x, want_y = write_mnist_pngs(root / "imgs", per_class=3)
    original = onnxprune.load(bundle["model"])
    want = evaluate(original, Dataset({"input": want_x}, want_y)).accuracy
    code, out, err = _run(["eval", bundle["model"], "--data", root / "imgs", *GREY, "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 30 and result["accuracy"] == pytest.approx(want)
    # the same preprocessing from a spec file beside the model
    beside = bundle["model"].with_name("mnist_resnet.preprocess.json")
    beside.write_text(json.dumps({"color": "L", "mean": [MNIST_MEAN], "std": [MNIST_STD]}))
    code, out, err = _run(["eval", bundle["model"], "--data", root / "imgs", "--json"])
    assert code == 0, err
    assert json.loads(out) == result


def test_image_folder_wrong_channel_count(bundle):
    root = bundle["model"].parent
    write_mnist_pngs(root / "imgs", per_class=1)
    _assert_fails(["eval", bundle["model"], "--data", root / "imgs"], root)
