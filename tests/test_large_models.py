"""Large models in memory close to their size (issue 15), on small models forced through the same paths.

A model with external data over ``IN_PLACE_THRESHOLD`` is read in place (tensors memory-mapped, never loaded
whole) and written tensor by tensor; here the threshold is lowered so that a few-hundred-KB conv net takes that
path. Sketch of the model (tools/build_large_models.py ``build_conv``)::

    input (1,3,8,8) -> [Conv 3x3 -> BN -> Relu] x (depth+1) -> GlobalAveragePool -> Flatten -> Gemm -> logits
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import onnxprune
from onnxprune.cli.app import main
from onnxprune.core import external, modelio
from onnxprune.errors import ModelError, OutputError
from onnxprune.pipeline import resources

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from build_large_models import build_conv  # noqa: E402


@pytest.fixture
def conv(tmp_path: Path) -> Path:
    """A ~400 KB conv net with every tensor of 1 KiB or more in ``conv.onnx.data``."""
    (tmp_path / "in").mkdir()
    return build_conv(tmp_path / "in" / "conv.onnx", width=32, depth=3)


@pytest.fixture
def in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelio, "IN_PLACE_THRESHOLD", 0)
    monkeypatch.setattr(external, "_IN_PLACE_MIN_TENSOR", 1024)
    monkeypatch.setattr(external, "SPILL_MIN_BYTES", 1024)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_read_in_place_maps_tensors(conv: Path, in_place: None) -> None:
    model = modelio.load_model(conv)
    big = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert big and all(modelio.in_place(t) for t in big) and modelio.read_in_place(model)
    whole = onnx.load(str(conv))
    for t in big:
        value = modelio.tensor_array(t)
        assert not value.flags.writeable  # a read-only view of the file, never a copy to mutate
        expected = numpy_helper.to_array(next(w for w in whole.graph.initializer if w.name == t.name))
        assert np.array_equal(value, expected)
    small = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    assert small  # the BN vectors (128 B) are read into the model


def test_in_place_output_is_identical_to_in_memory(conv: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {}
    for mode, threshold in (("memory", 1 << 62), ("mapped", 0)):
        monkeypatch.setattr(modelio, "IN_PLACE_THRESHOLD", threshold)
        monkeypatch.setattr(external, "_IN_PLACE_MIN_TENSOR", 1024)
        monkeypatch.setattr(external, "SPILL_MIN_BYTES", 1024)
        model = onnxprune.load(conv)
        assert modelio.read_in_place(model) == (mode == "mapped")
        result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, seed=3))
        assert result.verification is not None and result.verification.mask_equivalent
        spilled = [t for t in result.model.graph.initializer if modelio.in_place(t) and "/proc/self/fd/" in
                   {e.key: e.value for e in t.external_data}["location"]]
        assert bool(spilled) == (mode == "mapped")  # the cut weights were spilled, not held in memory
        out = tmp_path / mode
        out.mkdir()
        onnxprune.save(result.model, out / "pruned.onnx", external_data=True)
        outputs[mode] = out
    assert (outputs["memory"] / "pruned.onnx").read_bytes() == (outputs["mapped"] / "pruned.onnx").read_bytes()
    assert ((outputs["memory"] / "pruned.onnx.data").read_bytes()
            == (outputs["mapped"] / "pruned.onnx.data").read_bytes())


def test_cli_in_place_writes_aligned_external_data(conv: Path, tmp_path: Path, in_place: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = _digests(conv.parent)
    out = tmp_path / "out" / "conv.pruned.onnx"
    out.parent.mkdir()
    report = tmp_path / "out" / "report.json"
    assert main([str(conv), "--ratio", "0.5", "-o", str(out), "--report", str(report), "-q"]) == 0
    assert _digests(conv.parent) == before  # the input model and its data file are never modified
    assert sorted(p.name for p in out.parent.iterdir()) == ["conv.pruned.onnx", "conv.pruned.onnx.data",
                                                             "report.json"]
    data_size = (out.parent / "conv.pruned.onnx.data").stat().st_size
    structure = onnx.load(str(out), load_external_data=False)
    stubs = [t for t in structure.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert stubs
    for t in stubs:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "conv.pruned.onnx.data"  # relative, beside the model
        assert int(info["offset"]) % modelio.ALIGNMENT == 0
        assert int(info["offset"]) + int(info["length"]) <= data_size
    onnx.checker.check_model(str(out), full_check=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (1, 10)
    stages = json.loads(report.read_text())["resources"]["stages"]
    names = [s["stage"] for s in stages]
    assert names[0] == "load" and "rewrite" in names and "verification" in names and names[-1] == "write model"
    assert all(s["seconds"] >= 0 and s["rss_peak_bytes"] > 0 for s in stages)


def test_in_place_calibration_and_recovery(conv: Path, tmp_path: Path, in_place: None) -> None:
    """Calibration, scores and least-squares recovery read mapped (read-only) weights without copying them."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "calibrated.onnx"
    assert main([str(conv), "--ratio", "0.5", "--calib", str(calib), "-o", str(out), "-q"]) == 0
    pruned = _arrays(out)
    model = onnx.load(str(out), load_external_data=False)
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert pruned[conv1.input[1]].shape == (16, 16, 3, 3)


def test_failed_write_leaves_nothing(conv: Path, tmp_path: Path, in_place: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = onnxprune.load(conv)
    target = tmp_path / "out"
    target.mkdir()
    calls = []

    def failing(t: TensorProto, data: object) -> tuple[int, int]:
        calls.append(t.name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelio, "_copy_in_place", failing)
    with pytest.raises(OutputError, match="No space left"):
        modelio.save_model(model, target / "copy.onnx")
    assert calls and list(target.iterdir()) == []


def test_missing_data_file_in_place_is_a_model_error(conv: Path, in_place: None) -> None:
    data = conv.with_name("conv.onnx.data")
    data.write_bytes(data.read_bytes()[:1000])  # truncated: the tensors lie past its end
    with pytest.raises(ModelError, match="external data"):
        modelio.load_model(conv)


def test_model_that_cannot_fit_is_refused_before_work(conv: Path, tmp_path: Path, in_place: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 20)
    out = tmp_path / "never.onnx"
    assert main([str(conv), "--ratio", "0.5", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: ")
    assert "needs about" in err[0] and "available" in err[0]
    assert not out.exists()
    model = modelio.load_model(conv)
    assert resources.estimate_need(model, "none") < resources.estimate_need(model, "verify")
    resources.check_fits(model, "conv.onnx", "verify", available=1 << 40)  # fits: no error


def test_decoder_in_place_matches_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLaMA-style decoder of tools/build_large_models.py at a small width (heads, GQA, SwiGLU MLP cut by the
    transformer handlers): read in place with the cut weights spilled, the same model and plan as in memory."""
    pytest.importorskip("transformers")
    from build_large_models import build_llama

    path = build_llama(tmp_path / "llama.onnx", layers=3, hidden_size=128, intermediate_size=256,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=16, vocab_size=512)
    results = {}
    for mode, threshold in (("memory", 1 << 62), ("mapped", 0)):
        monkeypatch.setattr(modelio, "IN_PLACE_THRESHOLD", threshold)
        monkeypatch.setattr(external, "_IN_PLACE_MIN_TENSOR", 1024)
        monkeypatch.setattr(external, "SPILL_MIN_BYTES", 1024)
        result = onnxprune.prune(onnxprune.load(path), onnxprune.PruneConfig(ratio=0.5))
        assert result.verification is not None and result.verification.mask_equivalent
        assert result.report["macs_kept"] < 0.5
        results[mode] = result
    assert results["memory"].plan.to_json() == results["mapped"].plan.to_json()
    memory = {t.name: modelio.tensor_array(t) for t in results["memory"].model.graph.initializer}
    mapped = {t.name: modelio.tensor_array(t) for t in results["mapped"].model.graph.initializer}
    assert memory.keys() == mapped.keys()
    assert all(np.array_equal(memory[n], mapped[n]) for n in memory)
