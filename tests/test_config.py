"""Pipeline ergonomics: --config TOML, --json summary, --tolerance, exit codes a CI system acts on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    target = tmp_path / "m.onnx"
    shutil.copy(ROOT / "models" / "mnist_resnet.onnx", target)
    return target


def test_config_and_flags_give_byte_identical_outputs(model, tmp_path, capsys):
    cfg = tmp_path / "prune.toml"
    cfg.write_text('ratio = 0.4\ncriterion = "l1"\nround-to = 2\nexclude = ["/stem/*"]\nmin_channels = 2\n')
    assert main(["--config", str(cfg), str(model), "-o", str(tmp_path / "a.onnx"), "-q"]) == 0
    assert main([str(model), "-o", str(tmp_path / "b.onnx"), "--ratio", "0.4", "--criterion", "l1",
                 "--round-to", "2", "--exclude", "/stem/*", "--min-channels", "2", "-q"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert capsys.readouterr().err == ""


def test_flags_override_the_config_and_the_report_records_it(model, tmp_path):
    cfg = tmp_path / "prune.toml"
    cfg.write_text(f'ratio = 0.3\nreport = "{tmp_path / "r.json"}"\n')
    assert main(["--config", str(cfg), str(model), "--ratio", "0.5", "-q"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["ratio"] == 0.5
    assert report["config_file"]["path"] == str(cfg) and len(report["config_file"]["sha256"]) == 64


@pytest.mark.parametrize("text,needle", [("bogus = 1\n", "unknown key 'bogus'"), ("ratio = \n", "not valid TOML")])
def test_bad_config_is_a_usage_error(model, tmp_path, capsys, text, needle):
    cfg = tmp_path / "prune.toml"
    cfg.write_text(text)
    assert main(["--config", str(cfg), str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:") and needle in err[0]
    assert not (tmp_path / "m.pruned.onnx").exists()


def test_json_summary_on_stdout(model, tmp_path, capsys):
    assert main([str(model), "--json", "--plan", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert out.err == ""
    assert doc["tool"]["name"] == "onnxprune" and 0 < doc["macs_kept"] < 0.3
    assert doc["groups"] == {"found": 7, "pruned": 6, "blocked": 1}
    assert doc["verification"]["mask_equivalent"] is True and doc["plan"] == str(tmp_path / "p.json")


def test_verification_failure_exits_3_and_writes_nothing(model, tmp_path, capsys):
    """A tolerance no floating-point rewrite can meet makes verification fail: exit 3, nothing written."""
    assert main([str(model), "--tolerance", "-1", "--report", str(tmp_path / "r.json")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not mask-equivalent" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
