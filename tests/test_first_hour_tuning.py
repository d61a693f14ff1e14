"""The first hour (issue 13), timing and analysis: ``analyze`` without data warns, timing-driven searches refuse a
model too fast to time or decide on stable comparisons, ``--round-to auto`` falls back to 1 on noise, and the
plot names groups by their first node.

No real timing is asserted: the timer and the sessions the latency code times are replaced by fakes whose cost
the test controls (a constant, the model's MACs, or seeded noise).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, _finish

import onnxprune
from onnxprune.cli import main
from onnxprune.core.graph import static_input_shapes
from onnxprune.errors import UsageError
from onnxprune.measure.macs import count_macs
from onnxprune.tuning import latency, rounding
from onnxprune.tuning.sensitivity import Sensitivity, group_label, plot, sensitivity, short_name


def chain() -> onnx.ModelProto:
    """Groups of 24, 40 and 20 channels, named like a torch export::

        x[3] -> /stem/conv(3->24)+BN+Relu -> /body/conv(24->40)+BN+Relu -> GAP -> Flatten -> Gemm(40->20) -> Gemm
    """
    b = GraphBuilder(0)
    h = b.cbr("x", 3, 24)
    h = b.cbr(h, 24, 40)
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    h = b.relu(b.gemm(h, 40, 20))
    model = _finish(b, b.gemm(h, 20, 5))
    scopes = iter(["/stem/stem.0/Conv", "/body/body.0/conv/Conv", "/head/fc1/Gemm", "/head/fc2/Gemm"])
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            node.name = next(scopes)
    return model


class FakeClock:
    """Stands in for ``perf_counter`` and for the sessions the latency code builds: a run advances the clock by
    ``cost(model)`` (plus seeded relative noise), so every timing is decided by the test."""

    def __init__(self, cost, noise: float = 0.0, seed: int = 0) -> None:
        self.now, self.cost, self.noise = 0.0, cost, noise
        self.rng = np.random.default_rng(seed)
        self.sessions = 0
        clock = self

        class Session:
            def __init__(self, model: onnx.ModelProto, *args, **kwargs) -> None:
                self.seconds = clock.cost(model, clock.sessions)
                clock.sessions += 1

            def run(self, feeds, names=None):
                clock.now += self.seconds * (1.0 + clock.noise * clock.rng.standard_normal())
                return []

        self.Session = Session

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(latency, "perf_counter", lambda: self.now)
        monkeypatch.setattr(latency, "Session", self.Session)
        monkeypatch.setattr(rounding, "Session", self.Session)


def macs_of(model: onnx.ModelProto) -> int:
    return count_macs(model, static_input_shapes(model))[0]


# -- analyze without data ----------------------------------------------------------------------------------------
def test_analyze_without_data_warns_and_records_random(tmp_path: Path, capsys):
    path = tmp_path / "chain.onnx"
    onnx.save(chain(), path)
    assert main(["analyze", str(path), "-o", str(tmp_path / "an"), "--fractions", "0.5", "--no-latency"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warning = [line for line in err if "--data" in line]
    assert len(warning) == 1 and warning[0].startswith("onnxprune: warning: no --data:")
    assert "random inputs" in warning[0] and "say little" in warning[0]
    doc = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert doc["data"] == "random" and doc["tolerance"] == 0.01
    assert main(["analyze", str(path), "-o", str(tmp_path / "q"), "--fractions", "0.5", "--no-latency", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_analyze_leaves_the_latency_share_out_for_a_model_too_fast_to_time(tmp_path: Path, capsys, monkeypatch):
    FakeClock(lambda model, k: 0.14e-3).install(monkeypatch)
    path = tmp_path / "chain.onnx"
    onnx.save(chain(), path)
    assert main(["analyze", str(path), "-o", str(tmp_path / "an"), "--fractions", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "no latency shares: the model runs in 0.14 ms" in captured.err
    assert "latency" not in captured.out.splitlines()[0]  # no column of noise
    doc = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert doc["latency"]["measurable"] is False and doc["latency"]["timing_check"]["ms"] == pytest.approx(0.14)
    assert all(g.get("latency_share") is None for g in doc["groups"])


def test_analyze_latency_shares_from_stable_timings(monkeypatch):
    """Cost proportional to MACs, no noise: each share is the MACs saved, known exactly, and recorded with the
    raw medians, spreads and rounds."""
    model = chain()
    full = macs_of(model)
    FakeClock(lambda m, k: 5e-3 * macs_of(m) / full).install(monkeypatch)
    result = sensitivity(model, _random(model), (0.5,), probe=4, limit=4)
    assert result.add_latency(model, rounds=3) is None
    assert result.latency is not None and result.latency["unstable"] == []
    for row in (r for r in result.rows if "curve" in r):
        timing = row["latency"]
        assert row["latency_share"] == pytest.approx(1 - timing["ms"][1] / timing["ms"][0])
        assert timing["stable"] and timing["rounds"] == 3 and timing["spread"] == [0.0, 0.0]


# -- --target-latency ------------------------------------------------------------------------------------------
def test_target_latency_refuses_a_model_too_fast_to_time(tmp_path: Path, capsys, monkeypatch):
    FakeClock(lambda model, k: 0.14e-3).install(monkeypatch)
    path = tmp_path / "chain.onnx"
    onnx.save(chain(), path)
    assert main([str(path), "--target-latency", "0.5", "-o", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["onnxprune: error: --target-latency: the model runs in 0.14 ms, below the 1 ms per run that "
                   "can be timed reliably on this machine; use --target-macs"]
    assert not (tmp_path / "out.onnx").exists()


def test_target_latency_refuses_when_two_sessions_of_the_model_disagree(monkeypatch):
    FakeClock(lambda model, k: 2e-3 * (1.0 + 0.08 * (k % 2))).install(monkeypatch)  # every other session 8 % slower
    with pytest.raises(UsageError, match=r"runs in 2\.00 ms, and two sessions of it differ by up to 8\.0%"):
        onnxprune.prune_to_latency(chain(), onnxprune.PruneConfig(), 0.5)


def test_target_latency_picks_the_candidate_its_stable_timings_choose(monkeypatch):
    """Latency proportional to MACs with 2 % noise: every comparison not within the noise of the target is
    decided, the chosen budget is the largest that met the target, and two runs choose the same model."""
    model = chain()
    full = macs_of(model)
    reports = []
    for _ in range(2):
        FakeClock(lambda m, k: 5e-3 * macs_of(m) / full, noise=0.02).install(monkeypatch)
        result = onnxprune.prune_to_latency(model, onnxprune.PruneConfig(), 0.6, steps=4)
        reports.append(result.report)
    lat = reports[0]["latency"]
    assert len(lat["candidates"]) == 4 and lat["timing_check"]["measurable"]
    for c in lat["candidates"]:
        assert c["decided"] == (c["target_macs"] not in lat["undecided"])
        assert c["decided"] or abs(c["macs_kept"] - 0.6) < 0.03  # only a candidate at the target is in doubt
        assert c["ratio_low"] <= c["latency_ratio"] <= c["ratio_high"]
        assert c["latency_ratio"] == pytest.approx(c["macs_kept"], abs=0.02)
        assert c["ms_original"] == pytest.approx(5.0, rel=0.02) and c["rounds"] >= 15
    met = [c for c in lat["candidates"] if c["latency_ratio"] <= 0.6]
    assert met and reports[0]["macs_kept"] == max(met, key=lambda c: c["target_macs"])["macs_kept"]
    assert reports[1]["macs_kept"] == reports[0]["macs_kept"]
    assert lat["ratio"] == pytest.approx(reports[0]["macs_kept"], abs=0.02)


# -- --round-to auto -------------------------------------------------------------------------------------------
def _penalised(model: onnx.ModelProto, k: int) -> float:
    """1 ms, plus half of that for every weight dimension (out or in channels) that is not a multiple of 8."""
    odd = sum(int(d % 8 != 0) for w in model.graph.initializer if len(w.dims) >= 2 for d in w.dims[:2])
    return 1e-3 * (1.0 + 0.5 * odd)


def test_round_to_auto_rounds_where_the_timings_clearly_reward_it(monkeypatch):
    FakeClock(_penalised).install(monkeypatch)
    found = rounding.auto_round_to(chain(), rounds=3)
    assert found.unstable == [] and set(found.ratios) == set(found.multiples)
    for gid, ratios in found.ratios.items():
        assert found.multiples[gid] in (8, 16) and ratios[found.multiples[gid]] < 1.0
        assert found.rounds[gid] == 3  # no noise: decided in the first batch


def test_round_to_auto_falls_back_to_one_where_the_choice_rests_on_noise(monkeypatch):
    FakeClock(lambda model, k: 1e-3, noise=0.3, seed=3).install(monkeypatch)  # widths make no difference
    found = rounding.auto_round_to(chain(), rounds=3)
    assert found.unstable, found.intervals
    doc = found.to_dict()
    for gid in found.unstable:
        assert found.multiples[gid] == 1 and found.rounds[gid] == 9  # the bound: 3 * rounds
        assert next(g for g in doc["groups"] if g["id"] == gid)["within_noise"] is True


# -- the plot --------------------------------------------------------------------------------------------------
def test_short_names():
    assert short_name("/layer2/downsample/downsample.0/Conv") == "layer2/downsample.0"
    assert short_name("/stem/stem.0/Conv") == "stem.0"
    assert short_name("conv_3") == "conv_3"
    assert len(short_name("/a/" + "x" * 40 + "/Conv")) == 24
    assert group_label({"id": 7, "sources": ["/body/body.0/conv/Conv"]}) == "7: body.0/conv"
    assert group_label({"id": 7, "sources": []}) == "7"


def test_plot_labels_groups_by_first_node_and_marks_recommendation_and_tolerance(tmp_path: Path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k)))
    result = Sensitivity([0.25, 0.5], [
        {"id": 0, "sources": ["/stem/stem.0/Conv"], "macs_share": 0.6, "recommended_ratio": 0.25,
         "curve": [{"fraction": 0.25, "agreement": 1.0}, {"fraction": 0.5, "agreement": 0.9}]},
        {"id": 1, "sources": ["/body/body.0/conv/Conv"], "macs_share": 0.4, "recommended_ratio": 0.5,
         "curve": [{"fraction": 0.25, "agreement": 1.0}, {"fraction": 0.5, "agreement": 1.0}]},
    ], None, tolerance=0.02)
    assert plot(result, tmp_path / "s.png") and (tmp_path / "s.png").stat().st_size > 0
    left, right = figures[0].axes
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert legend[:2] == ["0: stem.0", "1: body.0/conv"]
    assert "recommended ratio" in legend and any(t.startswith("tolerance") for t in legend)
    assert any(list(line.get_ydata()) == [0.98, 0.98] for line in left.get_lines())  # the tolerance line
    stars = [line for line in left.get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert sorted((float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars) == [(0.25, 1.0), (0.5, 1.0)]
    assert [t.get_text() for t in right.get_xticklabels()] == ["0: stem.0", "1: body.0/conv"]


def _random(model: onnx.ModelProto):
    from onnxprune.measure.data import Dataset
    from onnxprune.measure.runtime import random_inputs

    feeds = random_inputs(model, 0)
    return Dataset({k: np.repeat(v, 4, axis=0) for k, v in feeds.items()})
