"""Execution providers, per-group latency tables and ``--round-to auto``.

Timings on a shared machine are noise: these tests assert the structure of what is measured (one entry per
group, fractions in [0, 1], kept counts on the chosen multiples, valid and verified models), never a speed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import builders
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import GraphBuilder, _finish
from test_first_hour_tuning import FakeClock, macs_of

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UsageError
from onnxprune.measure.runtime import Session, check_provider, random_inputs
from onnxprune.planning.planner import PlanConfig, choose
from onnxprune.tuning.latency import latency_table, median_times
from onnxprune.tuning.rounding import auto_round_to

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_resnet.onnx"


def wide_chain(seed: int = 0) -> onnx.ModelProto:
    """Groups wide enough for every candidate multiple (1, 4, 8, 16)::

        x[3] -> Conv(3->24)+BN+Relu -> Conv(24->40)+BN+Relu -> GAP -> Flatten -> Gemm(40->20)+Relu -> Gemm(20->5)
                \\___ group 24 ___/     \\___ group 40 ___/                       \\_ group 20 _/      blocked
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 24)
    h = b.cbr(h, 24, 40)
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    h = b.relu(b.gemm(h, 40, 20))
    return _finish(b, b.gemm(h, 20, 5))


def _on_multiples(report: dict, multiples: dict) -> None:
    for row in report["groups"]:
        m = int(multiples.get(row["id"], multiples.get(str(row["id"]), 1)))
        if row["kept"] < row["size"]:
            assert row["kept"] % m == 0, (row, m)


# -- providers -------------------------------------------------------------------------------------------------
def test_check_provider_names_the_available_ones():
    assert check_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    with pytest.raises(UsageError) as info:
        check_provider("NoSuchExecutionProvider")
    assert info.value.exit_code == 2
    assert all(p in str(info.value) for p in ort.get_available_providers())


def test_session_takes_providers():
    model = builders.residual_add()
    session = Session(model, providers=["CPUExecutionProvider"])
    assert session.session.get_providers() == ["CPUExecutionProvider"]
    assert session.run(random_inputs(model))[0].shape == (1, 4, 8, 8)


def test_prune_to_latency_refuses_an_unknown_provider():
    with pytest.raises(UsageError, match="not available"):
        onnxprune.prune_to_latency(builders.residual_add(), onnxprune.PruneConfig(), 0.5, provider="Nope")


# -- latency tables --------------------------------------------------------------------------------------------
def test_median_times_one_entry_per_run():
    calls = []
    times = median_times([lambda: calls.append("a"), lambda: calls.append("b")], rounds=3, warmup=1, repeat=2)
    assert len(times) == 2 and all(t >= 0 for t in times)
    assert calls.count("a") == calls.count("b") == 1 + 3 * 2


@pytest.mark.parametrize("build", [builders.bottleneck, builders.inverted_residual, builders.grouped_conv,
                                   builders.mlp_head])
def test_latency_table_has_an_entry_per_prunable_group(build):
    model = build()
    analysis = onnxprune.analyze(model)
    table = latency_table(model, kept=(0.6, 0.3), rounds=2, warmup=1)
    prunable = {g.id: g for g in analysis.groups if g.prunable}
    assert set(table.groups) == set(prunable) and table.skipped == []
    assert table.kept == [1.0, 0.6, 0.5, 0.3]  # the full width, the fractions asked for and always one half
    for gid, row in table.groups.items():
        size = prunable[gid].size
        assert row["widths"][0] == size and len(row["widths"]) == len(row["ms"]) == 4
        assert all(1 <= w <= size for w in row["widths"])
        assert row["widths"] == sorted(row["widths"], reverse=True)
        assert all(ms > 0 for ms in row["ms"]) and 0.0 <= row["share"] <= 1.0
    doc = json.loads(json.dumps(table.to_dict()))
    assert doc["ms_original"] > 0 and len(doc["groups"]) == len(prunable)


def test_latency_table_times_only_the_groups_asked_for():
    model = builders.bottleneck()
    prunable = [g.id for g in onnxprune.analyze(model).groups if g.prunable]
    table = latency_table(model, kept=(0.5,), groups=prunable[:1], rounds=1)
    assert list(table.groups) == prunable[:1] and table.skipped == prunable[1:]
    assert table.kept == [1.0, 0.5] and table.share(prunable[1]) is None


# -- round-to maps and auto ------------------------------------------------------------------------------------
def test_round_to_map_rounds_each_group_to_its_own_multiple():
    model = wide_chain()
    analysis = onnxprune.analyze(model)
    prunable = [g for g in analysis.groups if g.prunable]
    assert [g.size for g in prunable] == [24, 40, 20]
    scores = {g.id: np.arange(g.size, dtype=float) for g in analysis.groups}
    wanted = dict(zip([g.id for g in prunable], (8, 16, 4)))
    removed = choose(analysis, scores, PlanConfig(ratio=0.3, round_to=2, round_to_map=wanted))
    kept = {g.id: g.size - len(removed.get(g.id, ())) for g in prunable}
    assert kept == {prunable[0].id: 24, prunable[1].id: 32, prunable[2].id: 16}
    with pytest.raises(UsageError):
        PlanConfig(round_to_map={0: 0}).validate()


def test_auto_round_to_applies_its_rule_to_what_it_measured():
    """Candidates (1, 8, 32) on groups of 24, 40 and 20: 32 is tried only for the 40-wide group; the chosen
    multiple is the largest whose measured ratio is within the tolerance of the fastest and no slower than not
    rounding (checked on the ratios the result reports, whatever the machine measured)."""
    model = wide_chain()
    tolerance = 0.03
    found = auto_round_to(model, candidates=(1, 8, 32), rounds=2, warmup=1, tolerance=tolerance)
    sizes = {g.id: g.size for g in onnxprune.analyze(model).groups if g.prunable}
    assert sorted(sizes.values()) == [20, 24, 40] and set(found.multiples) == set(sizes)
    for gid, size in sizes.items():
        ratios = found.ratios[gid]
        assert set(ratios) == ({1, 8, 32} if size > 32 else {1, 8})
        assert all(r > 0 for r in ratios.values())
        limit = min(min(ratios.values()) + tolerance, 1.0)
        rule = max(m for m, r in ratios.items() if r <= limit)  # a choice resting on noise falls back to 1
        assert found.multiples[gid] == (1 if gid in found.unstable else rule), (gid, ratios, found.unstable)
    assert {d["id"]: d["multiple"] for d in found.to_dict()["groups"]} == found.multiples


def test_auto_round_to_leaves_groups_too_small_for_any_candidate_at_one():
    model = builders.residual_add()  # groups of 8 and 6
    found = auto_round_to(model, candidates=(8, 16), rounds=1, warmup=1)
    prunable = [g.id for g in onnxprune.analyze(model).groups if g.prunable]
    assert found.multiples == {gid: 1 for gid in prunable} and found.ratios == {}


@pytest.mark.parametrize("build", [builders.depthwise_separable, builders.grouped_conv, builders.conv_transpose,
                                   builders.layer_norm_channels_last, builders.flatten_gemm_head])
def test_auto_round_to_benchmarks_every_op_kind(build):
    found = auto_round_to(build(), candidates=(1, 4), rounds=1, warmup=1)
    assert all(m in (1, 4) for m in found.multiples.values())


def test_prune_measures_auto_itself():
    model = wide_chain()
    with pytest.raises(UsageError, match="measure_round_to"):
        onnxprune.PruneConfig(round_to="auto").plan_config()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.3, round_to="auto"))
    assert result.verification.mask_equivalent and result.report["macs_kept"] < 1.0


@pytest.mark.parametrize("extra", [{"ratio": 0.3}, {"target_macs": 0.5}, {"ratio": 0.3, "global_ranking": True}])
def test_round_to_auto_prunes_onto_the_chosen_multiples(extra):
    model = wide_chain()
    config = onnxprune.PruneConfig(round_to="auto", **extra).measure_round_to(model)
    assert config.round_to_map is not None and set(config.round_to_map) >= {
        g.id for g in onnxprune.analyze(model).groups if g.prunable}
    result = onnxprune.prune(model, config)
    assert result.verification.mask_equivalent is True
    onnx.checker.check_model(result.model, full_check=True)
    _on_multiples(result.report, config.round_to_map)
    assert result.report["options"]["round_to"] == "auto"


def test_round_to_auto_with_target_latency_records_the_provider(monkeypatch):
    model = wide_chain()
    full = macs_of(model)
    FakeClock(lambda m, k: 5e-3 * macs_of(m) / full).install(monkeypatch)  # latency follows the MACs
    result = onnxprune.prune_to_latency(model, onnxprune.PruneConfig(round_to="auto"), 0.8, steps=2,
                                        provider="CPUExecutionProvider")
    assert result.report["latency"]["provider"] == "CPUExecutionProvider"
    _on_multiples(result.report, result.report["options"]["round_to_map"])
    assert result.verification.mask_equivalent is True


# -- command line ----------------------------------------------------------------------------------------------
@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "wide.onnx"
    onnx.save(wide_chain(), path)
    return path


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: ") and "Traceback" not in err[0], err
    return err[0]


def test_cli_round_to_auto(model_path, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main([str(model_path), "--ratio", "0.3", "--round-to", "auto", "--report", str(report), "-q"]) == 0
    doc = json.loads(report.read_text())
    assert doc["options"]["round_to"] == "auto" and doc["verification"]["mask_equivalent"] is True
    _on_multiples(doc, doc["options"]["round_to_map"])
    onnx.checker.check_model(onnx.load(tmp_path / "wide.pruned.onnx"), full_check=True)


def test_cli_round_to_auto_from_a_config_file(model_path, tmp_path):
    cfg = tmp_path / "prune.toml"
    cfg.write_text('round-to = "auto"\nratio = 0.3\n')
    assert main(["--config", str(cfg), str(model_path), "--report", str(tmp_path / "r.json"), "-q"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["options"]["round_to"] == "auto"


@pytest.mark.parametrize("argv,needle", [
    (["--provider", "NoSuchExecutionProvider"], "CPUExecutionProvider"),
    (["--target-latency", "0.5", "--provider", "NoSuchExecutionProvider"], "not available"),
    (["--round-to", "fast"], "'auto'"),
    (["--round-to", "0"], "'auto'"),
])
def test_cli_bad_provider_or_round_to_is_one_usage_line(model_path, tmp_path, capsys, argv, needle):
    assert main([str(model_path), *argv]) == 2
    assert needle in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.onnx"]


def test_cli_analyze_reports_latency_share_beside_macs_share(tmp_path, capsys, monkeypatch):
    full = macs_of(onnxprune.load(MNIST))
    FakeClock(lambda m, k: 5e-3 * macs_of(m) / full).install(monkeypatch)  # timeable, latency follows the MACs
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    out = tmp_path / "an"
    assert main(["analyze", str(model), "-o", str(out), "--fractions", "0.5", "--limit", "16", "--probe", "8",
                 "--latency-rounds", "2", "--latency-groups", "4"]) == 0
    table = capsys.readouterr().out
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["latency"]["provider"] == "CPUExecutionProvider" and doc["latency"]["groups_timed"] == 4
    curves = [g for g in doc["groups"] if "curve" in g]
    timed = [g for g in curves if g["latency_share"] is not None]
    assert len(timed) == 4 and len(doc["latency"]["groups_not_timed"]) == len(curves) - 4
    assert all(0.0 <= g["latency_share"] <= 1.0 for g in timed)
    assert all(g["latency"]["kept"] == [1.0, 0.5] and len(g["latency"]["ms"]) == 2 for g in timed)
    assert min(g["macs"] for g in timed) >= max(g["macs"] for g in curves if g not in timed)
    assert "latency" in table.splitlines()[0] and "MACs" in table.splitlines()[0]


def test_cli_analyze_no_latency(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main(["analyze", str(model), "-o", str(tmp_path / "an"), "--fractions", "0.5", "--limit", "16",
                 "--probe", "8", "--no-latency"]) == 0
    doc = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert doc["latency"] is None and not any("latency_share" in g for g in doc["groups"])
    assert "latency" not in capsys.readouterr().out.splitlines()[0]


def test_cli_analyze_bad_provider(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(MNIST, model)
    assert main(["analyze", str(model), "-o", str(tmp_path / "an"), "--provider", "Nope"]) == 2
    assert "available:" in _one_error(capsys)
    assert not (tmp_path / "an").exists()
