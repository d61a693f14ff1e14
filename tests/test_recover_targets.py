"""What least-squares recovery reproduces (onnxprune/rewriting/targets.py): a residual sum rather than each
addend, a ReLU's output rather than its input; and the ``obs`` criterion (onnxprune/planning/obs.py), which
chooses the channels that refit best. Tiny linear graphs where the pruned network can match the original
exactly."""
from __future__ import annotations

import numpy as np
import onnx
from conftest import run_ort
from onnx import TensorProto, helper, numpy_helper

import onnxprune
import onnxprune.planning.obs as obs
import onnxprune.rewriting.targets as targets
from onnxprune.core.graph import Graph
from onnxprune.measure.data import Dataset
from onnxprune.planning.criteria import score
from onnxprune.rewriting.recover import recover
from onnxprune.rewriting.rewrite import apply_keep
from onnxprune.rewriting.targets import fit_target, residual_target, ridge_fit


def _conv(name: str, x: str, y: str, w: np.ndarray, b: np.ndarray) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
             numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name), inits


def _model(nodes: list[tuple[onnx.NodeProto, list[onnx.TensorProto]]], extra: list[onnx.NodeProto], out: str,
           out_channels: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [n for n, _ in nodes] + extra, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", out_channels, 5, 5])],
        [t for _, inits in nodes for t in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _residual_pair(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,5,5] -> H(1x1, 4->4) h -> B(1x1, 4->3) b ─┐
                 -> G(1x1, 4->8) g -> C(1x1, 8->3) c ─ Add -> s

    g's channels 4..7 repeat 0..3, so cutting them loses nothing: the refitted C can absorb whatever error B
    leaves (both read linear functions of x). Cutting h's channels 2, 3 loses information B cannot recover."""
    rng = np.random.default_rng(seed)
    g_w = rng.standard_normal((4, 4, 1, 1))
    return _model([
        _conv("H", "x", "h", rng.standard_normal((4, 4, 1, 1)), rng.standard_normal(4)),
        _conv("G", "x", "g", np.concatenate([g_w, g_w]), np.tile(rng.standard_normal(4), 2)),
        _conv("B", "h", "b", rng.standard_normal((3, 4, 1, 1)), rng.standard_normal(3)),
        _conv("C", "g", "c", rng.standard_normal((3, 8, 1, 1)), rng.standard_normal(3)),
    ], [helper.make_node("Add", ["b", "c"], ["s"])], "s", 3)


def _cut(model: onnx.ModelProto, cuts: dict[str, list[int]]) -> tuple[onnx.ModelProto, object, dict]:
    analysis = onnxprune.analyze(Graph.build(model))
    removed: dict[int, np.ndarray] = {}
    for tensor, channels in cuts.items():
        gids, local = analysis.unit_index(analysis.labels[tensor].atoms)
        removed[int(gids[0])] = np.sort(local[channels])
    keep = analysis.keep_positions(removed)
    return apply_keep(analysis, keep), analysis, keep


def _samples(n: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, 5, 5)).astype(np.float32)


def _error(model: onnx.ModelProto, pruned: onnx.ModelProto, x: np.ndarray) -> float:
    want, got = run_ort(model, {"x": x})[0], run_ort(pruned, {"x": x})[0]
    return float(np.abs(got - want).max() / np.abs(want).max())


def _recovered(model: onnx.ModelProto, cuts: dict[str, list[int]], x: np.ndarray) -> onnx.ModelProto:
    pruned, analysis, keep = _cut(model, cuts)
    return recover(model, pruned, analysis, keep, "lstsq", None, Dataset({"x": x}), batch_size=16)


def test_residual_target_is_found_for_the_addend_refitted_last():
    graph = Graph.build(_residual_pair())
    b, c = (next(n for n in graph.nodes if n.name == name) for name in "BC")
    assert fit_target(b, None, graph, later={3}) == targets.Target("b")  # C (node 3) is not final yet
    assert fit_target(c, None, graph, later=set()) == targets.Target("s", other="b")


def test_residual_refit_matches_the_sum_where_it_can(monkeypatch):
    model, x = _residual_pair(), _samples()
    cuts = {"h": [2, 3], "g": [4, 5, 6, 7]}
    exact = _error(model, _recovered(model, cuts, x), x)
    held_out = _error(model, _recovered(model, cuts, x), _samples(seed=3))
    monkeypatch.setattr(targets, "RESIDUAL", False)
    per_addend = _error(model, _recovered(model, cuts, x), x)
    assert exact < 1e-2 and held_out < 1e-2, (exact, held_out)  # C absorbs B's error (up to the ridge damping)
    assert per_addend > 10 * exact, (per_addend, exact)


def test_relu_target_clips_only_what_a_relu_keeps():
    graph = Graph.build(_model([_conv("A", "x", "a", np.ones((2, 4, 1, 1)), np.zeros(2))],
                               [helper.make_node("Relu", ["a"], ["r"])], "r", 2))
    assert fit_target(graph.nodes[0], None, graph, set()).relu
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((400, 3)), np.ones((400, 1))], axis=1)
    y = x @ rng.standard_normal((4, 2))
    hidden = np.where(y > 0, y, -y ** 2 - 1)  # below zero, what no linear map fits and the ReLU hides anyway
    y_fit, clip, offset = residual_target(hidden, None, None, relu=True)
    clipped = ridge_fit(x, y_fit, 1e-9, clip, -offset)
    plain = ridge_fit(x, y_fit, 1e-9)
    assert clipped is not None and plain is not None

    def after_relu(theta: np.ndarray) -> float:
        return float(np.square(np.maximum(x @ theta, 0) - np.maximum(hidden, 0)).mean())
    assert after_relu(clipped) < 0.2 * after_relu(plain), (after_relu(clipped), after_relu(plain))


def _redundant(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,5,5] -> H(1x1, 4->4) h -> B(1x1, 4->3) y, where h3 = 3 (h0 + h1): one of h0, h1, h3 carries nothing
    the others do not, while h2 (the smallest filter) is the only one with its information."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 4, 1, 1)) * 0.3
    w[2] *= 0.3
    w[3] = 3 * (w[0] + w[1])
    bias = rng.standard_normal(4) * 0.1
    bias[3] = 3 * (bias[0] + bias[1])
    wb = rng.standard_normal((3, 4, 1, 1)) * 0.3
    wb[:, 3] *= 10
    return _model([_conv("H", "x", "h", w, bias), _conv("B", "h", "y", wb, rng.standard_normal(3))], [], "y", 3)


def test_obs_drops_a_redundant_channel_and_the_refit_is_exact():
    model, x = _redundant(), _samples()
    runs = {}
    for criterion in ("obs", "wanda"):
        config = onnxprune.PruneConfig(ratio=0.25, criterion=criterion)
        result = onnxprune.prune(model, config, calib=Dataset({"x": x}))
        dropped = {int(c) for t in result.plan.tensors for c in np.setdiff1d(np.arange(t.size), t.keep)}
        runs[criterion] = dropped, _error(model, result.model, _samples(seed=5))
    assert len(runs["obs"][0]) == 1 and runs["obs"][0] < {0, 1, 3}
    assert runs["obs"][1] < 1e-2
    assert runs["wanda"][0] == {2} and runs["wanda"][1] > 5 * runs["obs"][1], runs  # what obs improves on


def test_obs_falls_back_to_wanda_beyond_its_width(monkeypatch):
    model, x = _redundant(), _samples()
    analysis = onnxprune.analyze(Graph.build(model))
    names = ["h"]
    stats = obs.gram_statistics(model, names, {"h": 1}, Dataset({"x": x}))
    assert ("gram", "y") in stats and stats[("gram", "y")].shape == (4, 4)
    wanda = score(analysis, "wanda", stats=stats)
    assert not np.allclose(score(analysis, "obs", stats=stats)[0], wanda[0])
    monkeypatch.setattr(obs, "MAX_COLUMNS", 3)
    narrow = obs.gram_statistics(model, names, {"h": 1}, Dataset({"x": x}))
    assert ("gram", "y") not in narrow
    np.testing.assert_allclose(score(analysis, "obs", stats=narrow)[0], wanda[0])
