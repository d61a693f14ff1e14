"""The first hour with data (issue 13, items 3 and 5): class labels come from the image folders' names, options
that name something fail when it matches nothing (exit 2, one line), and every conversion the loader makes on
its own is one ``onnxprune: note:`` line (a likely mistake one ``onnxprune: warning:`` line)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE_MODEL, MNIST_MEAN, MNIST_STD, write_mnist_pngs

import onnxprune
from onnxprune.cli import main
from onnxprune.measure.data import Dataset, ImageSpec, load_data
from onnxprune.measure.evaluate import evaluate

MODELS = EXAMPLE_MODEL.parent
GREY = ["--color", "L", "--mean", str(MNIST_MEAN), "--std", str(MNIST_STD)]
SPEC = ImageSpec(color="L", mean=(MNIST_MEAN,), std=(MNIST_STD,))


def _run(capsys, argv: list) -> tuple[int, str, list[str]]:
    """(exit code, stdout, stderr lines) of ``onnxprune ARGV``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _fails(capsys, argv: list, *contains: str) -> str:
    """Exit 2 with exactly one ``onnxprune: error:`` line holding every string of ``contains``."""
    code, _, lines = _run(capsys, argv)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), lines
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


def _notes(lines: list[str], kind: str = "note") -> list[str]:
    return [line for line in lines if line.startswith(f"onnxprune: {kind}: ")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """PNG class folders 0..9 of MNIST samples with folder "5" removed, and the (inputs, labels) left."""
    root = tmp_path_factory.mktemp("digits") / "imgs"
    x, y = write_mnist_pngs(root, per_class=6, stray_file=False)
    shutil.rmtree(root / "5")
    return root, x[y != 5], y[y != 5]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnxprune.load(EXAMPLE_MODEL)


# -- item 3: labels from the folder names ----------------------------------------------------------------------------
def test_missing_digit_class_keeps_the_labels(capsys, digits, model):
    """Folders 0-4 and 6-9: folder "7" is class 7 (not 6), so accuracy is the model's, with a warning."""
    root, x, y = digits
    want = evaluate(model, Dataset({"input": x}, y)).accuracy
    assert want is not None and want >= 0.9
    code, out, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", root, *GREY, "--json"])
    assert code == 0, lines
    assert json.loads(out)["accuracy"] == pytest.approx(want)
    warning, = _notes(lines, "warning")
    assert "9 class folders" in warning and "10 class scores" in warning and "no folder for 5" in warning
    data = load_data(root, model, SPEC)
    assert data.classes == {str(c): c for c in range(10) if c != 5}


def test_named_class_folders_count_in_sorted_order(tmp_path, capsys, model):
    root = tmp_path / "imgs"
    write_mnist_pngs(root, per_class=1, stray_file=False)
    for c in range(10):
        (root / str(c)).rename(root / f"class_{c}")
    data = load_data(root, model, SPEC)
    assert data.classes == {f"class_{c}": c for c in range(10)} and data.warnings == []
    np.testing.assert_array_equal(data.labels, np.arange(10))
    shutil.rmtree(root / "class_5")
    code, _, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", root, *GREY])
    assert code == 0, lines
    warning, = _notes(lines, "warning")
    assert "9 class folders" in warning and "sorted order" in warning and "'class_9'=8" in warning


# -- item 5: options that name something fail when it matches nothing ------------------------------------------------
def test_exclude_that_matches_nothing(tmp_path, capsys):
    line = _fails(capsys, [EXAMPLE_MODEL, "--exclude", "stem*", "-o", tmp_path / "out.onnx"],
                  "--exclude 'stem*'", "start with '/'", "'*stem*'")
    assert "matches no node" in line
    assert not (tmp_path / "out.onnx").exists()
    assert main([str(EXAMPLE_MODEL), "--exclude", "*stem*", "-o", str(tmp_path / "out.onnx"), "-q"]) == 0


def test_input_shape_for_an_input_that_does_not_exist(tmp_path, capsys):
    _fails(capsys, [EXAMPLE_MODEL, "--input-shape", "image:1x1x28x28", "-o", tmp_path / "out.onnx"],
           "'image'", "inputs: input")
    _fails(capsys, ["inspect", EXAMPLE_MODEL, "--input-shape", "image:1x1x28x28"], "inputs: input")


def test_input_shape_against_a_pinned_batch(tmp_path, capsys):
    pinned = onnx.load(EXAMPLE_MODEL)
    for vi in [*pinned.graph.input, *pinned.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "pinned.onnx"
    onnx.save(pinned, path)
    _fails(capsys, [path, "--input-shape", "input:8x1x28x28", "-o", tmp_path / "out.onnx"],
           "pins the batch", "to 1")
    _fails(capsys, [EXAMPLE_MODEL, "--input-shape", "input:1x1x32x32", "-o", tmp_path / "out.onnx"],
           "pins dimension 2", "to 28")
    _fails(capsys, [EXAMPLE_MODEL, "--input-shape", "input:1x28x28", "-o", tmp_path / "out.onnx"], "rank 4")


def test_plan_entry_that_names_no_tensor(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "onnxprune.plan/1", "model_sha256": None,
                                "tensors": [{"name": "stem", "axis": 1, "size": 16, "keep": [0]}]}))
    _fails(capsys, ["apply", EXAMPLE_MODEL, "--plan", plan, "-o", tmp_path / "out.onnx"], "plan entry 'stem'")


# -- silent fix-ups: one note line each ------------------------------------------------------------------------------
def test_resized_images_are_noted(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    write_mnist_pngs(root, per_class=1, stray_file=False)
    for f in root.rglob("*.png"):
        with Image.open(f) as img:
            img.resize((32, 32)).save(f)
    code, _, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", root, *GREY])
    assert code == 0, lines
    assert _notes(lines) == ["onnxprune: note: resized 32x32 images to the model's 28x28 (--size HxW to choose)"]
    code, _, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", root, *GREY, "--size", "28x28"])
    assert code == 0 and _notes(lines) == []  # asked for


def test_float64_arrays_are_cast_and_noted(tmp_path, capsys):
    with np.load(MODELS / "mnist_val.npz") as a:
        x, y = a["input"][:200], a["labels"][:200]
    np.savez(tmp_path / "f32.npz", input=x, labels=y)
    np.savez(tmp_path / "f64.npz", input=x.astype(np.float64), labels=y)
    code, want, _ = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", tmp_path / "f32.npz", "--json"])
    assert code == 0
    code, got, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", tmp_path / "f64.npz", "--json"])
    assert code == 0 and json.loads(got)["accuracy"] == json.loads(want)["accuracy"]
    assert _notes(lines) == ["onnxprune: note: 'f64.npz': cast input 'input' float64 -> float32 (the model's type)"]
    # --quiet keeps the notes to itself
    code, _, lines = _run(capsys, [EXAMPLE_MODEL, "--calib", tmp_path / "f64.npz", "--calib-samples", "64", "-q",
                                   "-o", tmp_path / "out.onnx"])
    assert code == 0 and _notes(lines) == [], lines


def test_integer_pixels_are_refused_with_a_hint(tmp_path, capsys):
    with np.load(MODELS / "mnist_val.npz") as a:
        x = a["input"][:8]
    np.savez(tmp_path / "u8.npz", input=(x * 255).astype(np.uint8))
    _fails(capsys, ["eval", EXAMPLE_MODEL, "--data", tmp_path / "u8.npz"], "float32", "scale integer pixels")


@pytest.mark.parametrize("case, note", [
    ("lone-array", "'d.npz': its only array 'x' feeds the model's input 'input'"),
    ("extra-array", "'d.npz': ignored arrays that name no model input: mask"),
    ("float-labels", "'d.npz': cast labels float32 -> int64"),
])
def test_npz_fix_ups_are_noted(tmp_path, capsys, case, note):
    with np.load(MODELS / "mnist_val.npz") as a:
        x, y = a["input"][:50], a["labels"][:50]
    path = tmp_path / "d.npz"
    if case == "lone-array":
        np.savez(path, x=x, labels=y)
    elif case == "extra-array":
        np.savez(path, input=x, mask=x, labels=y)
    else:
        np.savez(path, input=x, labels=y.astype(np.float32))
    code, out, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", path, "--json"])
    assert code == 0, lines
    assert _notes(lines) == [f"onnxprune: note: {note}"]
    assert json.loads(out)["accuracy"] >= 0.9


def test_labels_beyond_the_model_classes_warn(tmp_path, capsys):
    with np.load(MODELS / "mnist_val.npz") as a:
        x, y = a["input"][:50], a["labels"][:50]
    np.savez(tmp_path / "d.npz", input=x, labels=y + 1)  # numbered from 1
    code, _, lines = _run(capsys, ["eval", EXAMPLE_MODEL, "--data", tmp_path / "d.npz"])
    assert code == 0
    assert _notes(lines, "warning") == ["onnxprune: warning: 'd.npz': labels go up to 10 but the model scores "
                                        "classes 0-9 only"]


def test_image_folder_fix_ups_are_noted(tmp_path, model):
    """Colour conversion, images outside the class folders and files that are not images: one note each."""
    from PIL import Image

    root = tmp_path / "imgs"
    write_mnist_pngs(root, per_class=1, stray_file=False)
    first = next((root / "0").glob("*.png"))
    with Image.open(first) as img:
        img.convert("RGB").save(first)
        img.save(root / "loose.png")
    (root / "3" / "notes.txt").write_text("x")
    data = load_data(root, model, SPEC)
    assert len(data) == 10 and data.warnings == []
    assert data.notes == ["'imgs': skipped 1 entries of the class folders that are not images (e.g. 'notes.txt')",
                          "'imgs': ignored 1 images outside the class folders",
                          "converted RGB images to grey (--color L)"]


def test_pinned_batch_remainder_is_noted(tmp_path, model):
    pinned = onnx.load(EXAMPLE_MODEL)
    for vi in [*pinned.graph.input, *pinned.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    with np.load(MODELS / "mnist_val.npz") as a:
        np.savez(tmp_path / "d.npz", input=a["input"][:10])
    data = load_data(tmp_path / "d.npz", pinned)
    assert data.notes == ["'d.npz': the model takes batches of exactly 4: the last 2 of 10 samples are left out"]
