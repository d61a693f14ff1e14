"""Budgets (--target-macs / --target-params) and re-applying plans (onnxprune apply)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from conftest import input_shapes

import onnxprune
from onnxprune.cli import main
from onnxprune.core.graph import static_input_shapes
from onnxprune.measure.cost import CostModel
from onnxprune.measure.macs import count_macs, count_params
from onnxprune.rewriting.rewrite import apply_keep

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_resnet.onnx"


def _add_back_one_channel(plan: dict, group_tensors: list[str]) -> dict | None:
    """The plan with one more channel kept in one group: the group's first listed tensor gets back its lowest
    removed index and its other tensors are left out (apply_plan extends a cut to the whole group)."""
    entries = [t for t in plan["tensors"] if t["name"] in group_tensors]
    if not entries:
        return None
    first = entries[0]
    removed = sorted(set(range(first["size"])) - set(first["keep"]))
    if not removed:
        return None
    others = [t for t in plan["tensors"] if t["name"] not in group_tensors]
    return {**plan, "tensors": others + [{**first, "keep": sorted(first["keep"] + removed[:1])}]}


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_budget_lands_within_one_channel_of_target(tmp_path, kind, target):
    """The written model's MACs (or parameters), counted by count_macs/count_params, stay at or under the target,
    and keeping back a single channel of some group would break it: the budget is used up to one channel."""
    src, out, plan_path = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "p.json"
    shutil.copy(MNIST, src)
    assert main([str(src), f"--target-{kind}", str(target), "-o", str(out), "--plan", str(plan_path), "-q"]) == 0
    original, pruned = onnx.load(src), onnx.load(out)
    shapes = input_shapes(original)

    def fraction(model: onnx.ModelProto) -> float:
        if kind == "macs":
            return count_macs(model, shapes)[0] / count_macs(original, shapes)[0]
        return count_params(model) / count_params(original)

    got = fraction(pruned)
    assert got <= target + 1e-9
    plan = json.loads(plan_path.read_text())
    overshoots = []
    for group in onnxprune.analyze(original).groups:
        if group.prunable and group.cells is None:
            more = _add_back_one_channel(plan, group.tensors)
            if more is not None:
                bigger = onnxprune.apply_plan(original, onnxprune.Plan.from_dict(more), verify_result=False)
                overshoots.append(fraction(bigger.model))
    assert overshoots, "the budget cut some group"
    assert all(f > got for f in overshoots)  # every channel kept back costs something
    assert max(overshoots) > target, (got, sorted(overshoots))


@pytest.mark.parametrize("build", [builders.residual_add, builders.se_block, builders.flatten_gemm_head,
                                   builders.depthwise_separable, builders.concat_branches])
def test_cost_model_matches_the_rewritten_model(build):
    model = build()
    analysis = onnxprune.analyze(model)
    shapes = static_input_shapes(model)
    rng = np.random.default_rng(0)
    removed = {}
    for g in analysis.groups:
        if g.prunable and g.cells is None:
            removed[g.id] = np.sort(rng.choice(g.size, size=g.size // 2, replace=False))
    pruned = apply_keep(analysis, analysis.keep_positions(removed))
    from onnxprune.measure.stats import model_stats

    before, after = model_stats(model, shapes), model_stats(pruned, shapes)
    macs, params = CostModel(model, analysis, shapes).fractions(removed)
    assert macs == pytest.approx(after.macs / before.macs)
    assert params == pytest.approx(after.params / before.params)


def test_budget_options_are_checked(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    for args in (["--target-macs", "0.4", "--target-params", "0.4"], ["--target-macs", "0"],
                 ["--target-macs", "1.5"], ["--target-params", "0.5", "--schedule", "iterative"]):
        assert main([str(model), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onnxprune: error:")
    assert not (tmp_path / "m.pruned.onnx").exists()


def test_apply_reproduces_a_prune_byte_for_byte(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main([str(model), "-o", str(tmp_path / "a.onnx"), "--plan", str(tmp_path / "p.json"), "-q"]) == 0
    assert main(["apply", str(model), "--plan", str(tmp_path / "p.json"), "-o", str(tmp_path / "b.onnx"),
                 "-q"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_apply_to_another_checkpoint(tmp_path):
    """Same architecture, other weights: the plan's channels are cut and the result is mask-equivalent."""
    model = onnxprune.load(MNIST)
    plan = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).plan
    other = onnx.ModelProto()
    other.CopyFrom(model)
    rng = np.random.default_rng(1)
    for t in other.graph.initializer:
        value = onnx.numpy_helper.to_array(t)
        if value.dtype == np.float32 and value.size > 1:
            t.CopyFrom(onnx.numpy_helper.from_array((value * rng.uniform(0.5, 1.5, value.shape)).astype(
                np.float32), t.name))
    result = onnxprune.apply_plan(other, plan)
    assert result.verification.mask_equivalent is True
    assert result.plan.keep_map().keys() == plan.keep_map().keys()


def test_hand_edited_plan_cuts_the_whole_group(tmp_path):
    model = onnxprune.load(MNIST)
    plan = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).plan.to_dict()
    first = plan["tensors"][0]
    first["keep"] = first["keep"][:-1]  # drop one more channel from one tensor only
    result = onnxprune.apply_plan(model, onnxprune.Plan.from_dict(plan))
    assert result.verification.mask_equivalent is True
    assert len(result.plan.tensors[0].keep) == len(first["keep"])
    shrunk = {t.name: len(t.keep) for t in result.plan.tensors}
    assert shrunk["/stem/stem.2/Relu_output_0"] == len(first["keep"])  # the group followed


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["tensors"][0].update(size=99), "does not match the model"),
    (lambda p: p["tensors"][0].update(name="nope"), "names no channel tensor"),
    (lambda p: p["tensors"][0].update(keep=[]), "removes every channel"),
    (lambda p: p.update(format="other"), "plan"),
])
def test_bad_plans_are_refused(tmp_path, capsys, edit, needle):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main([str(model), "-o", str(tmp_path / "a.onnx"), "--plan", str(tmp_path / "p.json"), "-q"]) == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    edit(plan)
    (tmp_path / "p.json").write_text(json.dumps(plan))
    assert main(["apply", str(model), "--plan", str(tmp_path / "p.json"), "-o", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:") and needle in err[0]
    assert not (tmp_path / "b.onnx").exists()


def test_max_drop_keeps_accuracy_and_beats_a_uniform_ratio():
    """--max-drop 0.01 on the trained MNIST model: within one point, and fewer MACs than the deepest uniform
    --ratio that also stays within one point (0.3: MACs 0.53, accuracy 97.8 %; 0.35 already drops 1.1)."""
    from onnxprune.measure.data import load_data

    model = onnxprune.load(MNIST)
    calib = load_data(ROOT / "models" / "mnist_calib.npz", model)
    val = load_data(ROOT / "models" / "mnist_val.npz", model)
    result = onnxprune.prune_within(model, onnxprune.PruneConfig(), 0.01, val, calib=calib)
    before = result.report["evaluation"]["before"]["accuracy"]
    after = result.report["evaluation"]["after"]["accuracy"]
    assert before - after <= 0.01 + 1e-9
    uniform = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.3), calib=calib)
    assert result.report["macs_kept"] < uniform.report["macs_kept"] - 0.05
    # the model returned is the smallest budget tried that stayed within the limit
    tried = result.report["max_drop"]["candidates"]
    within = [c for c in tried if c["drop"] <= 0.01 + 1e-9]
    assert within and [c for c in tried if c["drop"] > 0.01 + 1e-9], "the search met the limit from both sides"
    assert result.report["macs_kept"] == pytest.approx(min(within, key=lambda c: c["target_macs"])["macs_kept"])


def test_max_drop_needs_eval(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main([str(model), "--max-drop", "0.01"]) == 2
    assert "needs evaluation data" in capsys.readouterr().err


def test_analyze_writes_json_plot_and_table(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    out = tmp_path / "an"
    assert main(["analyze", str(model), "--data", str(ROOT / "models" / "mnist_calib.npz"), "-o", str(out),
                 "--fractions", "0.25,0.5", "--limit", "64"]) == 0
    table = capsys.readouterr().out
    doc = json.loads((out / "analysis.json").read_text())
    curves = [g for g in doc["groups"] if "curve" in g]
    assert len(curves) == 6 and all(len(g["curve"]) == 2 for g in curves)
    assert all(0.0 <= p["agreement"] <= 1.0 for g in curves for p in g["curve"])
    assert all(g["recommended_ratio"] in (0.0, 0.25, 0.5) for g in curves)
    assert doc["baseline_accuracy"] > 0.9 and "created by" in table
    pytest.importorskip("matplotlib")
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_without_data_uses_random_inputs(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main(["analyze", str(model), "-o", str(tmp_path / "an"), "--fractions", "0.5"]) == 0
    doc = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert doc["baseline_accuracy"] is None and doc["fractions"] == [0.5]


def test_target_latency_refuses_a_model_too_fast_to_time():
    """The bundled model runs in well under a millisecond: a latency search there would rest on noise, so it is
    refused with a usage error that points to --target-macs (the search itself is tested with a fake clock in
    tests/test_first_hour_tuning.py)."""
    with pytest.raises(onnxprune.UsageError, match="--target-macs"):
        onnxprune.prune_to_latency(onnxprune.load(MNIST), onnxprune.PruneConfig(), 0.6, steps=3)
