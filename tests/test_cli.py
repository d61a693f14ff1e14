"""The command line: every error path (exit code, one line on stderr, nothing written, input untouched) and the
success paths (default output name, plan/report JSON, inspect, --version, determinism, --exclude)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from conftest import EXAMPLE_MODEL, count_params, random_feeds, run_ort

import onnxprune
from onnxprune.cli import main


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("onnxprune: error: "), lines[0]
    return lines[0]


def _assert_fails(capsys, argv: list[str], code: int, directory: Path, contains: str | None = None) -> str:
    """Run the CLI, expect ``code``, one error line, and no change at all in ``directory``."""
    before = _snapshot(directory)
    assert main(argv) == code
    line = _one_error_line(capsys)
    if contains is not None:
        assert contains.lower() in line.lower(), line
    after = _snapshot(directory)
    assert after == before, f"files changed: {set(after) ^ set(before)}"
    assert not list(directory.glob(".onnxprune-*")), "temporary files left behind"
    return line


# -- error paths ---------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path, capsys):
    _assert_fails(capsys, [str(tmp_path / "nope.onnx")], 1, tmp_path, "does not exist")


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    _assert_fails(capsys, [str(tmp_path / "empty.onnx")], 1, tmp_path, "empty")


def test_truncated_file(tmp_path, capsys):
    data = EXAMPLE_MODEL.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    _assert_fails(capsys, [str(tmp_path / "cut.onnx")], 1, tmp_path, "cut.onnx")


def test_text_file(tmp_path, capsys):
    (tmp_path / "notes.onnx").write_text("this is plainly not a protobuf model\n" * 3)
    _assert_fails(capsys, [str(tmp_path / "notes.onnx")], 1, tmp_path, "notes.onnx")


def test_directory_as_model(tmp_path, capsys):
    (tmp_path / "dir.onnx").mkdir()
    _assert_fails(capsys, [str(tmp_path / "dir.onnx")], 1, tmp_path, "directory")


def test_protobuf_without_graph(tmp_path, capsys):
    (tmp_path / "bare.onnx").write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    _assert_fails(capsys, [str(tmp_path / "bare.onnx")], 1, tmp_path, "graph")


def test_missing_external_data(tmp_path, capsys):
    onnx.save(builders.conv_bn_relu_chain(), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    _assert_fails(capsys, [str(tmp_path / "ext.onnx")], 1, tmp_path)


def test_missing_external_data_is_a_model_error(tmp_path, capsys):
    onnx.save(builders.conv_bn_relu_chain(), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    line = _assert_fails(capsys, [str(tmp_path / "ext.onnx")], 1, tmp_path, "external data")
    assert "internal error" not in line


def _invalid_models():
    unknown_op = builders.conv_bn_relu_chain()
    unknown_op.graph.node[2].op_type = "Frobnicate"  # no such op in the default domain
    bad_group = builders.conv_bn_relu_chain()
    del bad_group.graph.node[0].attribute[:]
    bad_group.graph.node[0].attribute.append(onnx.helper.make_attribute("group", 3))  # 8 filters, 3 groups
    return {"unknown_op": unknown_op, "bad_group": bad_group}


@pytest.mark.parametrize("kind", ["unknown_op", "bad_group"])
def test_invalid_input_model_is_a_model_error(tmp_path, capsys, kind):
    onnx.save(_invalid_models()[kind], tmp_path / "bad.onnx")
    line = _assert_fails(capsys, [str(tmp_path / "bad.onnx"), "--ratio", "0"], 1, tmp_path)
    assert "internal error" not in line and "pruned model" not in line


@pytest.mark.parametrize("kind", ["unknown_op", "bad_group"])
def test_invalid_input_model_fails_cleanly(tmp_path, capsys, kind):
    onnx.save(_invalid_models()[kind], tmp_path / "bad.onnx")
    before = _snapshot(tmp_path)
    assert main([str(tmp_path / "bad.onnx")]) in (1, 3)
    _one_error_line(capsys)
    assert _snapshot(tmp_path) == before and not list(tmp_path.glob(".onnxprune-*"))


def test_dangling_tensor_reference(tmp_path, capsys):
    model = builders.conv_bn_relu_chain()
    model.graph.node[2].input[0] = "ghost"  # the Relu reads a tensor nothing produces
    onnx.save(model, tmp_path / "dangling.onnx")
    line = _assert_fails(capsys, [str(tmp_path / "dangling.onnx")], 1, tmp_path, "ghost")
    assert "nothing produces" in line
    _assert_fails(capsys, ["inspect", str(tmp_path / "dangling.onnx")], 1, tmp_path, "ghost")


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "nan", "1.5"])
def test_bad_ratio(example_model, capsys, ratio):
    _assert_fails(capsys, [str(example_model), f"--ratio={ratio}"], 2, example_model.parent, "--ratio")


def test_ratio_not_a_number(example_model, capsys):
    _assert_fails(capsys, [str(example_model), "--ratio", "half"], 2, example_model.parent, "ratio")


def test_output_dir_missing_is_created(example_model):
    out = example_model.parent / "no" / "such" / "dir" / "out.onnx"
    assert main([str(example_model), "-o", str(out), "--quiet"]) == 0
    assert out.exists()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("flag", ["--plan", "--report"])
def test_json_output_dir_missing_is_created(example_model, flag):
    target = example_model.parent / "missing" / "x.json"
    assert main([str(example_model), flag, str(target), "--quiet"]) == 0
    assert json.loads(target.read_text())


def test_plan_is_a_directory(example_model, capsys):
    (example_model.parent / "plan.json").mkdir()
    _assert_fails(capsys, [str(example_model), "--plan", str(example_model.parent / "plan.json")], 1,
                  example_model.parent, "directory")


def test_output_is_a_directory(example_model, capsys):
    (example_model.parent / "sub").mkdir()
    _assert_fails(capsys, [str(example_model), "-o", str(example_model.parent / "sub")], 1,
                  example_model.parent, "directory")


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_output_equals_input_refused(example_model, capsys, spelling, monkeypatch):
    monkeypatch.chdir(example_model.parent)
    if spelling == "same":
        out = str(example_model)
    elif spelling == "dotted":
        out = "./" + example_model.name
    else:
        os.symlink(example_model.name, example_model.parent / "alias.onnx")
        out = str(example_model.parent / "alias.onnx")
    _assert_fails(capsys, [str(example_model), "-o", out], 2, example_model.parent, "overwrite")


def test_plan_over_input_refused(example_model, capsys):
    _assert_fails(capsys, [str(example_model), "--plan", str(example_model)], 2, example_model.parent,
                  "overwrite")


def test_unknown_criterion(example_model, capsys):
    _assert_fails(capsys, [str(example_model), "--criterion", "taylor"], 2, example_model.parent, "criterion")


def test_unknown_option(example_model, capsys):
    _assert_fails(capsys, [str(example_model), "--frobnicate"], 2, example_model.parent)


@pytest.mark.parametrize("value", ["input", "input:1xAx28x28", ":1x1x28x28"])
def test_bad_input_shape(example_model, capsys, value):
    _assert_fails(capsys, [str(example_model), "--input-shape", value], 2, example_model.parent, "--input-shape")


@pytest.mark.parametrize("flag, value", [("--round-to", "0"), ("--min-channels", "0")])
def test_bad_counts(example_model, capsys, flag, value):
    _assert_fails(capsys, [str(example_model), flag, value], 2, example_model.parent, flag)


def test_inspect_missing_file(tmp_path, capsys):
    _assert_fails(capsys, ["inspect", str(tmp_path / "nope.onnx")], 1, tmp_path, "does not exist")


def test_verification_failure_exit_3_writes_nothing(example_model, capsys, monkeypatch):
    """A failed verification (simulated) exits 3 and writes neither model, plan nor report."""
    import onnxprune.pipeline.pruning as pipeline

    def failing_verify(*args, **kwargs):
        raise onnxprune.VerificationError("pruned model is not mask-equivalent (simulated)")

    monkeypatch.setattr(pipeline, "verify", failing_verify)
    d = example_model.parent
    _assert_fails(capsys, [str(example_model), "--plan", str(d / "p.json"), "--report", str(d / "r.json")],
                  3, d, "simulated")


def test_internal_error_is_one_line(example_model, capsys, monkeypatch):
    import onnxprune.pipeline.pruning as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(pipeline, "apply_keep", boom)
    line = _assert_fails(capsys, [str(example_model)], 1, example_model.parent, "kaboom")
    assert "internal error" in line


def test_debug_shows_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "nope.onnx"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("onnxprune: error:")


# -- success paths ----------------------------------------------------------------------------------------------------
def test_default_output_name(example_model, capsys):
    original = example_model.read_bytes()
    assert main([str(example_model), "--ratio", "0.5"]) == 0
    out = example_model.with_name("mnist_resnet.pruned.onnx")
    assert out.is_file()
    assert example_model.read_bytes() == original
    assert sorted(p.name for p in example_model.parent.iterdir()) == ["mnist_resnet.onnx",
                                                                       "mnist_resnet.pruned.onnx"]
    err = capsys.readouterr().err
    assert "mask-equivalent" in err and "mnist_resnet.pruned.onnx" in err
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    model = onnx.load(example_model)
    assert count_params(pruned) < count_params(model)
    feeds = random_feeds(model)
    assert run_ort(pruned, feeds)[0].shape == run_ort(model, feeds)[0].shape == (2, 10)


def test_external_data_input(tmp_path, capsys):
    model = builders.conv_bn_relu_chain()
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    data = (tmp_path / "ext.onnx.data").read_bytes()
    assert main([str(tmp_path / "ext.onnx"), "-q"]) == 0
    assert (tmp_path / "ext.onnx.data").read_bytes() == data
    pruned = onnx.load(tmp_path / "ext.pruned.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    assert count_params(pruned) < count_params(model)


def test_quiet_prints_nothing(example_model, capsys):
    assert main([str(example_model), "-q", "-o", str(example_model.parent / "o.onnx")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_plan_and_report_json(example_model, capsys):
    d = example_model.parent
    argv = [str(example_model), "-o", str(d / "out.onnx"), "--plan", str(d / "plan.json"),
            "--report", str(d / "report.json"), "--ratio", "0.25", "-q"]
    assert main(argv) == 0
    plan = json.loads((d / "plan.json").read_text())
    assert plan["format"] == "onnxprune.plan/1"
    assert plan["model_sha256"] == hashlib.sha256(example_model.read_bytes()).hexdigest()
    assert plan["tensors"], "something was pruned"
    model = onnx.load(example_model)
    produced = [o for n in model.graph.node for o in n.output]
    for t in plan["tensors"]:
        assert set(t) == {"name", "axis", "size", "keep"}
        assert t["name"] in produced
        assert t["keep"] == sorted(set(t["keep"])) and 0 < len(t["keep"]) < t["size"]
        assert t["axis"] == 1
    # the pruned model's tensors have the planned widths
    pruned = onnx.load(d / "out.onnx")
    shapes = {vi.name: vi.type.tensor_type.shape.dim
              for vi in onnx.shape_inference.infer_shapes(pruned).graph.value_info}
    for t in plan["tensors"]:
        if t["name"] in shapes:
            assert shapes[t["name"]][t["axis"]].dim_value == len(t["keep"])
    assert onnxprune.Plan.from_dict(plan).to_dict() == plan

    report = json.loads((d / "report.json").read_text())
    for key in ("before", "after", "groups", "macs_kept", "params_kept", "verification", "options"):
        assert key in report
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["before"]["params"] == count_params(model)
    assert report["after"]["params"] == count_params(pruned)
    assert report["verification"]["mask_equivalent"] is True
    assert report["options"]["ratio"] == 0.25
    assert report["output"]["bytes"] == (d / "out.onnx").stat().st_size
    assert len(report["groups"]) == 7
    for g in report["groups"]:
        assert {"id", "size", "kept", "blocked", "sources"} <= set(g)
        if g["blocked"] is None:
            assert g["kept"] == g["size"] - int(0.25 * g["size"])
        else:
            assert g["kept"] == g["size"]
    assert not list(d.glob(".onnxprune-*"))


def test_no_verify(example_model, capsys):
    d = example_model.parent
    assert main([str(example_model), "--no-verify", "--report", str(d / "r.json"), "-q"]) == 0
    assert json.loads((d / "r.json").read_text())["verification"] is None


def test_ratio_zero_same_outputs(example_model, capsys):
    out = example_model.parent / "zero.onnx"
    assert main([str(example_model), "--ratio", "0", "-o", str(out), "-q"]) == 0
    model, pruned = onnx.load(example_model), onnx.load(out)
    feeds = random_feeds(model)
    assert np.array_equal(run_ort(pruned, feeds)[0], run_ort(model, feeds)[0])


def test_same_options_byte_identical(example_model, capsys):
    d = example_model.parent
    opts = ["--ratio", "0.4", "--criterion", "random", "--seed", "7", "-q"]
    assert main([str(example_model), "-o", str(d / "a.onnx"), "--plan", str(d / "a.json"), *opts]) == 0
    assert main([str(example_model), "-o", str(d / "b.onnx"), "--plan", str(d / "b.json"), *opts]) == 0
    assert (d / "a.onnx").read_bytes() == (d / "b.onnx").read_bytes()
    assert (d / "a.json").read_bytes() == (d / "b.json").read_bytes()
    assert main([str(example_model), "-o", str(d / "c.onnx"), "--ratio", "0.4", "--criterion", "random",
                 "--seed", "8", "-q"]) == 0
    assert (d / "c.onnx").read_bytes() != (d / "a.onnx").read_bytes()


def test_byte_identical_across_processes(tmp_path):
    """Same options in two fresh interpreters with different hash seeds: byte-identical model and plan."""
    import subprocess
    import sys

    onnx.save(builders.random_stack([("concat", 5), ("se", 3), ("grouped", 6), ("residual", 4)], seed=4),
              tmp_path / "m.onnx")
    outputs = []
    for hash_seed in ("1", "2"):
        out, plan = tmp_path / f"o{hash_seed}.onnx", tmp_path / f"p{hash_seed}.json"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", str(tmp_path / "m.onnx"), "-o", str(out),
                               "--plan", str(plan), "--criterion", "random", "--seed", "5", "-q"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == proc.stderr == ""
        outputs.append((out.read_bytes(), plan.read_bytes()))
    assert outputs[0] == outputs[1]


def test_exclude_leaves_group_intact(example_model, capsys):
    d = example_model.parent
    argv = [str(example_model), "-o", str(d / "out.onnx"), "--exclude", "/layer1/relu1/*",
            "--report", str(d / "r.json"), "--plan", str(d / "p.json"), "-q"]
    assert main(argv) == 0
    groups = json.loads((d / "r.json").read_text())["groups"]
    g1 = next(g for g in groups if g["sources"] == ["/layer1/conv1/Conv"])
    assert g1["kept"] == g1["size"] == 16
    assert "excluded" in g1["blocked"] and "/layer1/relu1/*" in g1["blocked"]
    assert sum(g["kept"] < g["size"] for g in groups) == 5
    pruned = onnx.load(d / "out.onnx")
    conv = next(n for n in pruned.graph.node if n.name == "/layer1/conv1/Conv")
    w = next(t for t in pruned.graph.initializer if t.name == conv.input[1])
    assert w.dims[0] == 16 and w.dims[1] == 8  # its own filters stay, its input (group 0) is still pruned
    planned = {t["name"] for t in json.loads((d / "p.json").read_text())["tensors"]}
    assert conv.output[0] not in planned


def test_exclude_node_blocks_every_group_touching_it(example_model, capsys):
    d = example_model.parent
    argv = [str(example_model), "--exclude", "/layer1/conv1/Conv", "--report", str(d / "r.json"), "-q"]
    assert main(argv) == 0
    groups = json.loads((d / "r.json").read_text())["groups"]
    excluded = [g["id"] for g in groups if g["blocked"] and "excluded" in g["blocked"]]
    assert excluded == [0, 1]  # the conv reads group 0 and creates group 1
    assert all(g["kept"] == g["size"] for g in groups if g["id"] in (0, 1))


def test_builder_model_through_cli(tmp_path, capsys):
    onnx.save(builders.inverted_residual(), tmp_path / "ir.onnx")
    assert main([str(tmp_path / "ir.onnx"), "--round-to", "4", "--global", "-q"]) == 0
    pruned = onnx.load(tmp_path / "ir.pruned.onnx")
    onnx.checker.check_model(pruned, full_check=True)


def test_input_shape_option(example_model, capsys):
    d = example_model.parent
    assert main([str(example_model), "--input-shape", "input:3x1x28x28", "--report", str(d / "r.json"),
                 "-q"]) == 0
    report = json.loads((d / "r.json").read_text())
    assert report["options"]["input_shapes"] == {"input": [3, 1, 28, 28]}
    baseline = onnxprune.prune(onnx.load(example_model), onnxprune.PruneConfig(verify=False)).report
    assert report["before"]["macs"] == 3 * baseline["before"]["macs"]


def test_inspect_table(example_model, capsys):
    assert main(["inspect", str(example_model)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["group", "kind", "size", "MACs"]
    assert set(lines[1]) == {"-"} and set(lines[-2]) == {"-"}
    rows = lines[2:-2]
    assert len(rows) == 7
    assert [int(r.split()[0]) for r in rows] == list(range(7))
    assert [r.split()[1] for r in rows] == ["channels"] * 6 + ["mlp"]  # the classifier's features
    assert [int(r.split()[2]) for r in rows] == [16, 16, 32, 32, 64, 64, 10]
    assert sum("prunable" in r for r in rows) == 6
    assert "BLOCKED: reaches graph output 'logits'" in out
    assert "7 groups: 6 prunable, 1 not" in out


def test_inspect_shows_unsupported_reason(tmp_path, capsys):
    onnx.save(builders.unsupported_op(), tmp_path / "u.onnx")
    assert main(["inspect", str(tmp_path / "u.onnx")]) == 0
    out = capsys.readouterr().out
    assert "BLOCKED: consumed by unsupported op CumSum" in out


def test_inspect_json(example_model, capsys):
    assert main(["inspect", str(example_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == count_params(onnx.load(example_model))
    assert data["macs"] > 0
    assert [g["id"] for g in data["groups"]] == list(range(7))
    for g in data["groups"]:
        assert g["kept"] == g["size"]
        assert g["macs"] >= 0 and g["params"] > 0
    assert [g["blocked"] for g in data["groups"]].count(None) == 6
    assert list(example_model.parent.iterdir()) == [example_model]  # inspect writes nothing


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"onnxprune {onnxprune.__version__}"


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "prune" in out


# -- regressions (found while writing this suite) ---------------------------------------------------------------------
@pytest.mark.parametrize("flags", [("-o", "out.onnx", "--plan", "out.onnx"),
                                   ("--plan", "x.json", "--report", "x.json"),
                                   ("-o", "out.onnx", "--report", "./out.onnx")])
def test_colliding_outputs_refused(example_model, capsys, monkeypatch, flags):
    """Was: -o X --plan X exited 0 and X held the plan JSON instead of the pruned model."""
    monkeypatch.chdir(example_model.parent)
    _assert_fails(capsys, [str(example_model), *flags, "-q"], 2, example_model.parent, "different files")


def test_json_outputs_honour_umask(example_model, capsys):
    """Was: plan/report JSON files were created 0600 (tempfile.mkstemp) while the model file honours the umask."""
    d = example_model.parent
    old = os.umask(0o022)
    try:
        assert main([str(example_model), "-o", str(d / "o.onnx"), "--plan", str(d / "p.json"), "-q"]) == 0
    finally:
        os.umask(old)
    assert (d / "o.onnx").stat().st_mode & 0o777 == 0o644
    assert (d / "p.json").stat().st_mode & 0o777 == 0o644
