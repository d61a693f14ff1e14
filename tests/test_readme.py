"""Every command of the README and its Python API example, run on the bundled files.

The commands are read from the README's code blocks (lines starting with ``onnxprune ``, ``python -m onnxprune``
or ``torchrun``), in order, each once. Every command runs in a fresh working folder where the paths it names
exist: the bundled files under ``models/`` are copied in, and the placeholders (``model.onnx``, ``small.onnx``,
``calib.npz``, ``train.npz``, ``val.npz``, ``images/``, ``plan.json``, ``prune.toml``, ...) are made from them:

* ``model.onnx`` is the bundled MNIST ResNet, or, where the command feeds images (``images/``, ``--size``), a small
  RGB classifier with a dynamic height and width (as is ``model_with_dynamic_hw.onnx``);
* ``small.onnx`` is that model pruned at ``--ratio 0.5``; ``calib.npz``/``train.npz`` are
  ``models/mnist_calib.npz``, ``val.npz`` is ``models/mnist_val.npz``; ``images/`` holds PNGs in class folders.

A command exits 0 unless a trailing ``# exit N`` comment in the README says otherwise. Commands that need torch
(fine-tuning, the training schedules, ``taylor``, ``torchrun``), Pillow (image folders) or a GPU skip without them;
the training schedules on LeNet-5 and ``torchrun`` are ``slow``.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, needs
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main

README = ROOT / "README.md"
MODELS = ROOT / "models"
#: Options whose value is a path the command writes (never made beforehand).
OUTPUT_OPTIONS = {"-o", "--output", "--report"}
#: Placeholder data files -> the bundled file they stand for.
DATA = {"calib.npz": "mnist_calib.npz", "train.npz": "mnist_calib.npz", "val.npz": "mnist_val.npz"}
#: Subcommands and options that run the torch bridge.
TORCH_MARKERS = ("finetune", "dropnet", "auto-balanced", "taylor", "torchrun")
#: Commands that take a minute or more on 2 cores: the training schedules on LeNet-5 (1 and 5 minutes), several
#: processes. (Fine-tuning the MNIST ResNet 5 epochs on its 256 calibration images, taylor and the iterative
#: schedule take about 5 s each.)
SLOW_MARKERS = ("--schedule dropnet", "--schedule auto-balanced", "torchrun ")


# -- reading the README ------------------------------------------------------------------------------------------
def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]


def is_command(line: str) -> bool:
    return line.startswith(("onnxprune ", "python -m onnxprune")) or (
        line.startswith("torchrun ") and "-m onnxprune" in line)


def readme_commands() -> list[str]:
    seen: dict[str, None] = {}
    for lang, body in code_blocks(README.read_text()):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in body.splitlines():
            line = line.strip()
            if is_command(line):
                seen.setdefault(line, None)
    return list(seen)


def split(command: str) -> tuple[list[str], int]:
    """The argv of a README line and the exit code it documents (``# exit N``; 0 without)."""
    argv = shlex.split(command, comments=True)
    found = re.search(r"#\s*exit\s+(\d+)", command)
    return argv, int(found.group(1)) if found else 0


#: README commands another test runs as they stand and checks further (not run twice).
COVERED = {"lenet5.onnx --ratio 0.75 --schedule": "run with its accuracy bar by tests/test_training_bars.py"}


def _param(command: str):
    marks = [pytest.mark.slow] if any(m in command for m in SLOW_MARKERS) else []
    marks += [pytest.mark.skip(reason=why) for key, why in COVERED.items() if key in command]
    return pytest.param(command, marks=marks, id=command[:110])


COMMANDS = readme_commands()


def test_readme_has_commands():
    assert len(COMMANDS) >= 20, COMMANDS
    assert any(c.startswith("onnxprune models/mnist_resnet.onnx --ratio 0.5") for c in COMMANDS)


# -- the bundled files and the placeholders ----------------------------------------------------------------------
def rgb_model(seed: int = 0) -> onnx.ModelProto:
    """``input`` [N, 3, H, W] (H and W dynamic) -> Conv 3->8 -> Relu -> Conv 8->16 -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm 16->10 -> ``logits``: an image classifier for the image-folder and dynamic-shape commands."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="/stem/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/stem/Relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/body/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/body/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="/head/Pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/head/Flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="/head/Gemm", transB=1),
    ]
    inits = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("w2", 16, 8, 3, 3), init("b2", 16, scale=0.1),
             init("w3", 10, 16), init("b3", 10, scale=0.1)]
    graph = helper.make_graph(
        nodes, "rgb_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test_readme")
    onnx.checker.check_model(model, full_check=True)
    return model


def write_images(root: Path, rgb: bool, per_class: int = 4, classes: int = 10) -> None:
    """PNGs in class folders 0..classes-1: MNIST digits (grey) or seeded RGB noise with a class-dependent tint."""
    from PIL import Image

    if not rgb:
        from conftest import write_mnist_pngs

        write_mnist_pngs(root, per_class=per_class, stray_file=False)
        return
    rng = np.random.default_rng(1)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40, 56, 3)).astype(np.float64)
            pixels[..., c % 3] = pixels[..., c % 3] * 0.5 + 127
            Image.fromarray(pixels.astype(np.uint8), mode="RGB").save(root / str(c) / f"{i}.png")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Files the commands read that a fresh clone does not hold: pruned models, a plan, a config, the RGB model."""
    out = tmp_path_factory.mktemp("readme_store")
    mnist = onnxprune.load(str(MODELS / "mnist_resnet.onnx"))
    pruned = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.5))
    onnxprune.save(pruned.model, str(out / "mnist_small.onnx"))
    (out / "plan.json").write_text(pruned.plan.to_json())
    rgb = rgb_model()
    onnx.save(rgb, str(out / "rgb.onnx"))
    onnxprune.save(onnxprune.prune(rgb, onnxprune.PruneConfig(ratio=0.5)).model, str(out / "rgb_small.onnx"))
    (out / "prune.toml").write_text("ratio = 0.5\n")
    return out


def prepare(command: str, argv: list[str], work: Path, store: Path) -> None:
    """Make every path ``argv`` reads exist under ``work``."""
    subcommand = next((a for a in argv[1:] if not a.startswith("-")), "")
    rgb = "images/" in argv or "--size" in argv or "--input-shape" in argv
    outputs = {argv[k + 1] for k, a in enumerate(argv[:-1])
               if a in OUTPUT_OPTIONS or (a == "--plan" and subcommand != "apply")}

    def copy(src: Path, dst: str) -> None:
        target = work / dst
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)

    for token in argv[1:]:
        if token in outputs or token.startswith("-"):
            continue
        if token.startswith("models/"):
            bundled = MODELS / token[len("models/"):]
            if bundled.is_file():
                copy(bundled, token)
            elif token == "models/mnist_resnet.pruned.onnx":  # the quick start's output
                copy(store / "mnist_small.onnx", token)
        elif token in ("model.onnx", "model_with_dynamic_hw.onnx"):
            copy(store / "rgb.onnx" if rgb or "dynamic" in token else MODELS / "mnist_resnet.onnx", token)
        elif token == "small.onnx":
            copy(store / ("rgb_small.onnx" if rgb else "mnist_small.onnx"), token)
        elif token in DATA:
            copy(MODELS / DATA[token], token)
        elif token in ("plan.json", "prune.toml"):
            copy(store / token, token)
        elif token == "images/" and not (work / "images").exists():
            write_images(work / "images", rgb=rgb)


def requirements(command: str, argv: list[str]) -> None:
    """Skip where the command needs what is not installed."""
    if any(m in command for m in TORCH_MARKERS):
        pytest.importorskip("torch", reason=needs("torch"))
    if "images/" in argv:
        pytest.importorskip("PIL", reason=needs("PIL"))
    if any(a.startswith("cuda") for a in argv):
        torch = pytest.importorskip("torch", reason=needs("torch"))
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
    if argv[0] == "torchrun" and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command(command, store, tmp_path, monkeypatch, capsys):
    argv, expected = split(command)
    requirements(command, argv)
    work = tmp_path / "work"
    work.mkdir()
    prepare(command, argv, work, store)
    monkeypatch.chdir(work)
    if argv[0] == "onnxprune":
        code = main(argv[1:])
        out, err = capsys.readouterr()
    else:  # python -m onnxprune, torchrun: a process of its own, importing this checkout's onnxprune
        if argv[0] == "python":
            argv[0] = sys.executable
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        code, out, err = done.returncode, done.stdout, done.stderr
    assert code == expected, (f"{command}\nexit {code}, expected {expected}\n"
                              f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")


# -- the Python API example ----------------------------------------------------------------------------------------
def api_chunks() -> list[str]:
    """The README's Python API example (the ```python block that imports onnxprune), in blank-line chunks."""
    blocks = [body for lang, body in code_blocks(README.read_text())
              if lang == "python" and "import onnxprune" in body]
    assert len(blocks) == 1, "expected one Python API example"
    return [chunk for chunk in re.split(r"\n\s*\n", blocks[0]) if chunk.strip()]


def run_api(chunks: list[str], work: Path, monkeypatch) -> dict:
    (work / "models").mkdir(parents=True)
    for name in ("mnist_resnet.onnx", "mnist_calib.npz", "mnist_val.npz"):
        shutil.copyfile(MODELS / name, work / "models" / name)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "readme_api"}
    for chunk in chunks:
        exec(compile(chunk, f"README.md (Python API: {chunk.splitlines()[0][:60]})", "exec"), namespace)
    return namespace


def test_python_api_example_first_part(tmp_path, monkeypatch, capsys):
    """Up to the first blank line after the plan is written: load, analyze, prune, save the model and the plan."""
    chunks = api_chunks()
    first = next(k for k, c in enumerate(chunks) if "plan.json" in c)
    namespace = run_api(chunks[:first + 1], tmp_path, monkeypatch)
    assert (tmp_path / "small.onnx").is_file() and (tmp_path / "plan.json").is_file()
    assert namespace["result"].report["macs_kept"] < 1.0


@pytest.mark.slow
def test_python_api_example(tmp_path, monkeypatch, capsys):
    """Everything but the torch part (its chunk imports onnxprune.training): calibration, budgets, searches,
    --round-to auto, latency tables (a minute or more)."""
    chunks = [c for c in api_chunks() if "onnxprune.training" not in c]
    assert len(chunks) >= 3
    namespace = run_api(chunks, tmp_path, monkeypatch)
    assert namespace["repaired"].report["macs_kept"] < 1.0


@pytest.mark.slow
def test_python_api_example_with_torch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch", reason=needs("torch"))
    chunks = api_chunks()
    assert any("onnxprune.training" in c for c in chunks)
    namespace = run_api(chunks, tmp_path, monkeypatch)
    assert namespace["tuned"] is not None and namespace["dropnet"] is not None


# -- the install and test commands -------------------------------------------------------------------------------
def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_ci_runs_the_readme_development_commands():
    """.ci/run runs the README's Development block verbatim and in order."""
    dev = section(README.read_text(), "Development")
    block = next(body for lang, body in code_blocks(dev))
    want = [line for line in block.splitlines() if line.strip()]
    assert want and want[0].startswith("pip install torch==")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    positions = []
    for line in want:
        assert line in ci, f".ci/run lacks the README's line {line!r}"
        positions.append(ci.index(line))
    assert positions == sorted(positions), "the README's Development commands run in another order in .ci/run"


def test_test_extra_brings_what_the_tests_import():
    """Every third-party package a test module imports is in the test extra (or a base dependency)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, a base dependency there
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-")
             for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    distribution = {"PIL": "pillow", "torch_pruning": "torch-pruning", "onnxruntime": "onnxruntime"}
    third_party = {"numpy", "onnx", "onnxruntime", "pytest", "hypothesis", "PIL", "matplotlib", "torch",
                   "torchvision", "torch_pruning", "mlxtend", "onnxscript", "click"}
    imported: set[str] = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_][A-Za-z0-9_]*)", path.read_text(), re.M):
            if m.group(1) in third_party:
                imported.add(m.group(1))
    missing = {m for m in imported if distribution.get(m, m).lower().replace("_", "-") not in names}
    assert not missing, f"tests import {sorted(missing)}, which the test extra does not install"
    assert "torch==2.13.0" in project["optional-dependencies"]["test"], "the test extra must pin the torch to keep"


def test_rgb_model_prunes():
    """The stand-in for the README's image models is prunable and valid."""
    result = onnxprune.prune(rgb_model(), onnxprune.PruneConfig(ratio=0.5))
    assert result.report["macs_kept"] < 0.6
