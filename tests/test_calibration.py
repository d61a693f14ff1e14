"""Calibration data and what is built on it: streamed channel statistics against a numpy reference, the
data-driven criteria, training-free recovery on the trained MNIST ResNet, the iterative schedule, evaluation in
the report, and loading samples (.npz, .npy, image folders, preprocessing specs)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE_MODEL, assert_mask_equivalent, interface, run_ort, tensor_shapes, write_mnist_pngs
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.core.graph import Graph
from onnxprune.errors import UsageError
from onnxprune.measure.calibrate import collect, consumer_inputs, static_batch
from onnxprune.measure.data import Dataset, ImageSpec, load_data
from onnxprune.measure.evaluate import evaluate
from onnxprune.planning.criteria import DATA_CRITERIA, score

MODELS = EXAMPLE_MODEL.parent
CALIB = MODELS / "mnist_calib.npz"
VAL = MODELS / "mnist_val.npz"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DEAD = 2  # the channel of the tiny model whose Relu output is always zero


# -- a tiny conv model with a known Relu output ------------------------------------------------------------------
def _tiny(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """x[B,3,8,8] -> Conv A(3->6, 3x3, pad 1) -> Relu ``r`` -> Conv B(6->4, 3x3, pad 1) -> y[B,4,8,8].

    Channel ``DEAD`` of A has a bias of -100 (its Relu output is always 0) and the largest filter, so magnitude
    criteria keep it while every data-driven criterion should drop it first.
    """
    rng = np.random.default_rng(seed)
    wa = (rng.standard_normal((6, 3, 3, 3)) * 0.5).astype(np.float32)
    wa[DEAD] *= 4.0
    ba = (rng.standard_normal(6) * 0.1).astype(np.float32)
    ba[DEAD] = -100.0
    wb = (rng.standard_normal((4, 6, 3, 3)) * 0.5).astype(np.float32)
    bb = (rng.standard_normal(4) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((wa, "WA"), (ba, "BA"), (wb, "WB"), (bb, "BB"))]
    nodes = [
        helper.make_node("Conv", ["x", "WA", "BA"], ["a"], name="convA", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "WB", "BB"], ["y"], name="convB", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _samples(n: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _relu_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``r`` for every sample, run one sample at a time in plain onnxruntime (not the library's Session)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_empty_tensor_value_info("r"))
    return np.concatenate([run_ort(exposed, {"x": x[k:k + 1]})[1] for k in range(len(x))]).astype(np.float64)


def _numpy_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution, pad 1, stride 1 (NCHW), in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # [N, C, H, W, 3, 3]
    return np.einsum("nchwij,mcij->nmhw", win, w.astype(np.float64)) + b.astype(np.float64)[None, :, None, None]


def _reference_stats(r: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "mean_activation": np.abs(r.mean(axis=(2, 3))).mean(axis=0),
        "apoz": (r == 0).mean(axis=(0, 2, 3)),
        "mean": r.mean(axis=(0, 2, 3)),
        "variance": r.var(axis=(0, 2, 3)),
        "rms": np.sqrt(np.square(r).mean(axis=(0, 2, 3))),
    }


def _collect_r(model, data: Dataset, batch_size: int = 32, limit: int | None = None):
    return collect(model, ["r"], {"r": 1}, data, batch_size, limit)["r"]


def _assert_stats(st, ref: dict[str, np.ndarray], samples: int) -> None:
    assert st.samples == samples
    assert st.elements == samples * 64
    for key, want in ref.items():
        np.testing.assert_allclose(getattr(st, key), want, rtol=1e-5, atol=1e-7, err_msg=key)


# -- statistics ----------------------------------------------------------------------------------------------------
def test_relu_reference_matches_numpy_convolution():
    """The onnxruntime reference itself is right (an independent numpy convolution agrees)."""
    model, x = _tiny(), _samples()
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    want = np.maximum(_numpy_conv(x, w["WA"], w["BA"]), 0.0)
    np.testing.assert_allclose(_relu_output(model, x), want, rtol=1e-4, atol=1e-4)


def test_collect_matches_numpy_statistics():
    model, x = _tiny(), _samples()
    r = _relu_output(model, x)
    assert np.all(r[:, DEAD] == 0) and 0 < (r == 0).mean() < 1
    st = _collect_r(model, Dataset({"x": x}))
    ref = _reference_stats(r)
    _assert_stats(st, ref, len(x))
    assert st.apoz[DEAD] == 1.0 and st.mean_activation[DEAD] == 0.0 and st.rms[DEAD] == 0.0


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_collect_does_not_depend_on_batching(batch_size):
    model, x = _tiny(), _samples()
    whole = _collect_r(model, Dataset({"x": x}), batch_size=len(x))
    st = _collect_r(model, Dataset({"x": x}), batch_size=batch_size)
    assert st.samples == whole.samples == len(x)
    assert st.elements == whole.elements
    np.testing.assert_array_equal(st.zeros, whole.zeros)
    for key in ("mean_activation", "apoz", "mean", "variance", "rms"):
        np.testing.assert_allclose(getattr(st, key), getattr(whole, key), rtol=1e-5, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("limit,batch_size", [(1, 4), (4, 3), (5, 7), (10, 4), (50, 4)])
def test_collect_limit_caps_the_samples(limit, batch_size):
    model, x = _tiny(), _samples()
    st = _collect_r(model, Dataset({"x": x}), batch_size=batch_size, limit=limit)
    used = min(limit, len(x))
    _assert_stats(st, _reference_stats(_relu_output(model, x[:used])), used)


def test_collect_two_dimensional_tensor():
    """A [N, C] tensor (the input of a Gemm): one position per sample."""
    x = np.random.default_rng(3).standard_normal((9, 5)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    st = collect(model, ["r"], {"r": 1}, Dataset({"x": x}), batch_size=4)["r"]
    r = np.maximum(x.astype(np.float64), 0)
    assert st.samples == 9 and st.elements == 9
    np.testing.assert_allclose(st.mean_activation, r.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(st.apoz, (r == 0).mean(axis=0))
    np.testing.assert_allclose(st.variance, r.var(axis=0), rtol=1e-5, atol=1e-9)


# -- pinned batch --------------------------------------------------------------------------------------------------
def test_pinned_batch_model_calibrates_sample_by_sample():
    pinned, free, x = _tiny(batch=1), _tiny(), _samples()
    assert static_batch(pinned) == 1 and static_batch(free) is None
    want = _collect_r(free, Dataset({"x": x}), batch_size=len(x))
    st = _collect_r(pinned, Dataset({"x": x}), batch_size=7)  # a batch of 7 would not even run
    assert st.samples == len(x)  # no remainder dropped
    for key in ("mean_activation", "apoz", "mean", "variance", "rms"):
        np.testing.assert_allclose(getattr(st, key), getattr(want, key), rtol=1e-6, atol=1e-9, err_msg=key)
    assert evaluate(pinned, Dataset({"x": x}), free, batch_size=7).agreement == 1.0


@pytest.mark.parametrize("recover", ["none", "bias"])
def test_pinned_batch_model_prunes_with_calibration(recover):
    model = _tiny(batch=1)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion="mean-act", recover=recover,
                                                          batch_size=4), calib=Dataset({"x": _samples()}))
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(model)
    assert result.report["after"]["macs"] < result.report["before"]["macs"]


def test_pinned_batch_model_prunes_with_default_recovery():
    """lstsq runs a pinned-batch-1 model one sample at a time and fits what the free-batch model fits."""
    pinned, free, x = _tiny(batch=1), _tiny(), _samples()
    config = onnxprune.PruneConfig(ratio=0.5, batch_size=4)
    result = onnxprune.prune(pinned, config, calib=Dataset({"x": x}))
    assert result.report["options"]["recover"] == "lstsq"
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(pinned)
    reference = onnxprune.prune(free, config, calib=Dataset({"x": x}))
    assert {k: v.tolist() for k, v in result.plan.keep_map().items()} == \
        {k: v.tolist() for k, v in reference.plan.keep_map().items()}
    probe = _samples(1, seed=9)
    got, want = run_ort(result.model, {"x": probe})[0], run_ort(reference.model, {"x": probe})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
    # and the refit did something: the consumer's weights are not the plain slice of the original
    plain = onnxprune.prune(pinned, onnxprune.PruneConfig(ratio=0.5, criterion="wanda", recover="none"),
                            calib=Dataset({"x": x}))
    assert not np.allclose(run_ort(plain.model, {"x": probe})[0], got)


# -- data-driven criteria ------------------------------------------------------------------------------------------
def _tiny_analysis_and_stats(x: np.ndarray):
    model = _tiny()
    analysis = onnxprune.analyze(Graph.build(model))
    names = consumer_inputs(analysis)
    assert names == ["r"]
    stats = collect(model, names, {n: analysis.labels[n].axis for n in names}, Dataset({"x": x}))
    return model, analysis, stats


def test_data_criteria_match_numpy_reference():
    """One consumer reads ``r``: each score is the per-channel statistic (times the consumer's column energy for
    act-var/wanda), divided by its mean over the group."""
    x = _samples()
    model, analysis, stats = _tiny_analysis_and_stats(x)
    ref = _reference_stats(_relu_output(model, x))
    wb = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "WB")).astype(np.float64)
    column = np.square(wb).sum(axis=(0, 2, 3))  # per input channel of convB
    expected = {
        "mean-act": ref["mean_activation"],
        "apoz": 1.0 - ref["apoz"],
        "act-var": ref["variance"] * column,
        "wanda": np.sqrt(column) * ref["rms"],
    }
    gids, local = analysis.unit_index(analysis.labels["r"].atoms)
    assert len(set(gids.tolist())) == 1
    gid = int(gids[0])
    for criterion, per in expected.items():
        got = score(analysis, criterion, stats=stats)[gid][local]  # back in channel order
        np.testing.assert_allclose(got, per / per.mean(), rtol=1e-5, atol=1e-9, err_msg=criterion)
        assert got[DEAD] == 0.0


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_drop_the_dead_channel_first(criterion):
    model, x = _tiny(), _samples()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=1 / 6, criterion=criterion, recover="none"),
                             calib=Dataset({"x": x}))
    assert {t.name for t in result.plan.tensors} == {"a", "r"}
    for entry in result.plan.tensors:
        assert DEAD not in entry.keep and len(entry.keep) == 5
    assert_mask_equivalent(model, result.model, result.plan)
    # magnitude keeps the big dead filter
    l2 = onnxprune.prune(model, onnxprune.PruneConfig(ratio=1 / 6, criterion="l2"))
    assert all(DEAD in t.keep for t in l2.plan.tensors)


@pytest.fixture(scope="module")
def mnist() -> onnx.ModelProto:
    return onnxprune.load(EXAMPLE_MODEL)


@pytest.fixture(scope="module")
def calib(mnist) -> Dataset:
    return load_data(CALIB, mnist)


@pytest.fixture(scope="module")
def val(mnist) -> Dataset:
    return load_data(VAL, mnist)


@pytest.fixture(scope="module")
def mnist_scores(mnist, calib):
    analysis = onnxprune.analyze(Graph.build(mnist))
    names = consumer_inputs(analysis)
    axes = {n: analysis.labels[n].axis for n in names}
    first = collect(mnist, names, axes, calib, batch_size=32, limit=64)
    again = collect(mnist, names, axes, calib, batch_size=17, limit=64)
    return analysis, first, again


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_score_every_unit_deterministically(mnist_scores, criterion):
    analysis, first, again = mnist_scores
    scores = score(analysis, criterion, stats=first)
    assert set(scores) == {g.id for g in analysis.groups}
    prunable = [g for g in analysis.groups if g.prunable]
    assert prunable
    for g in prunable:
        s = scores[g.id]
        assert s.shape == (g.size,)
        assert np.all(np.isfinite(s)) and np.all(s >= 0) and np.any(s > 0)
    repeat = score(analysis, criterion, stats=again)  # other batching, same samples
    for gid in scores:
        np.testing.assert_allclose(repeat[gid], scores[gid], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_need_calibration_data(mnist_scores, mnist, criterion):
    analysis = mnist_scores[0]
    with pytest.raises(UsageError, match="calib"):
        score(analysis, criterion)
    with pytest.raises(UsageError, match="calib"):
        onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.3, criterion=criterion))


@pytest.mark.parametrize("recover", ["bias", "lstsq"])
def test_recovery_needs_calibration_data(mnist, recover):
    with pytest.raises(UsageError, match="calib"):
        onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.3, recover=recover))


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criterion_prune_is_deterministic(mnist, calib, criterion):
    config = onnxprune.PruneConfig(ratio=0.3, criterion=criterion, recover="none", calib_samples=64)
    a = onnxprune.prune(mnist, config, calib=calib)
    b = onnxprune.prune(mnist, config, calib=calib)
    assert a.plan == b.plan
    assert a.report["options"]["criterion"] == criterion


# -- recovery on the trained MNIST model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recovered(mnist, calib, val):
    """Every MNIST run the recovery tests compare, computed once."""
    pristine = mnist.SerializeToString()
    runs = {}
    for key, kw in {
        "l2-none": dict(criterion="l2", recover="none"),
        "default": dict(),
        "wanda-none": dict(criterion="wanda", recover="none"),
        "wanda-bias": dict(criterion="wanda", recover="bias"),
    }.items():
        result = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.3, **kw), calib=calib,
                                 eval_data=val if key == "default" else None)
        runs[key] = (result, evaluate(result.model, val).accuracy)
    assert mnist.SerializeToString() == pristine, "prune() modified its input model"
    return evaluate(mnist, val).accuracy, runs


def test_baseline_accuracy(recovered):
    base, _ = recovered
    assert base == pytest.approx(0.981, abs=0.005)


def test_lstsq_closes_most_of_the_gap(recovered):
    base, runs = recovered
    result, acc = runs["default"]
    assert result.report["options"]["criterion"] == "obs"
    assert result.report["options"]["recover"] == "lstsq"
    none_acc = runs["l2-none"][1]
    gap = base - none_acc
    assert gap > 0.5, f"without recovery the model should collapse (base {base}, pruned {none_acc})"
    assert acc >= base - gap / 3, f"lstsq {acc:.3f} closes less than 2/3 of the gap {base:.3f} -> {none_acc:.3f}"
    assert acc >= 0.95


def test_bias_recovery_beats_none_for_wanda(recovered):
    _, runs = recovered
    assert runs["wanda-bias"][1] > runs["wanda-none"][1] + 0.1


@pytest.mark.parametrize("key", ["default", "wanda-bias"])
def test_recovered_model_is_valid_and_not_mask_checked(recovered, mnist, key):
    result, _ = recovered[1][key]
    v = result.report["verification"]
    assert v["mask_equivalent"] is None
    assert v["checker"] and v["onnxruntime"] and v["interface_unchanged"]
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(mnist)
    assert result.report["macs_kept"] < 0.75


@pytest.mark.parametrize("key", ["l2-none", "wanda-none"])
def test_no_recovery_with_calibration_keeps_mask_equivalence(recovered, mnist, key):
    result, _ = recovered[1][key]
    assert result.report["verification"]["mask_equivalent"] is True
    assert_mask_equivalent(mnist, result.model, result.plan)


def test_eval_data_in_report(recovered):
    result, acc = recovered[1]["default"]
    ev = result.report["evaluation"]
    assert ev["before"]["samples"] == ev["after"]["samples"] == 1000
    assert ev["before"]["accuracy"] == pytest.approx(0.981, abs=0.005)
    assert ev["before"]["agreement"] is None
    after = ev["after"]
    assert after["accuracy"] == pytest.approx(acc)
    assert 0.9 < after["agreement"] <= 1.0
    assert 0.9 < after["cosine"] <= 1.0 + 1e-9
    assert 0.0 < after["rel_error"] < 1.0
    json.dumps(result.report)  # serialisable as is


# -- iterative schedule --------------------------------------------------------------------------------------------
def _assert_plan_relative_to_original(original, pruned, plan) -> None:
    shapes_before, shapes_after = tensor_shapes(original), tensor_shapes(pruned)
    assert plan.tensors
    for t in plan.tensors:
        assert shapes_before[t.name][t.axis] == t.size
        assert shapes_after[t.name][t.axis] == len(t.keep)
        assert list(t.keep) == sorted(set(t.keep)) and 0 <= t.keep[0] and t.keep[-1] < t.size


@pytest.mark.parametrize("criterion", ["mean-act", "l2"])
def test_iterative_plan_is_relative_to_the_original(mnist, calib, criterion):
    config = dict(ratio=0.3, criterion=criterion, recover="none", calib_samples=64)
    iterative = onnxprune.prune(mnist, onnxprune.PruneConfig(schedule="iterative", step=0.2, **config), calib=calib)
    oneshot = onnxprune.prune(mnist, onnxprune.PruneConfig(**config), calib=calib)
    assert iterative.report["macs_kept"] == pytest.approx(oneshot.report["macs_kept"], abs=0.05)
    assert iterative.report["verification"]["mask_equivalent"] is True
    onnx.checker.check_model(iterative.model, full_check=True)
    _assert_plan_relative_to_original(mnist, iterative.model, iterative.plan)
    assert_mask_equivalent(mnist, iterative.model, iterative.plan)
    # the report's groups agree with the plan
    kept = {g["id"]: g["kept"] for g in iterative.report["groups"]}
    assert any(g["kept"] < g["size"] for g in iterative.report["groups"])
    assert set(kept) == {g.id for g in iterative.analysis.groups}


def test_iterative_with_recovery_reaches_target(mnist, calib, val, recovered):
    oneshot = recovered[1]["default"][0]
    result = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.3, schedule="iterative", step=0.2,
                                                          calib_samples=64), calib=calib)
    assert result.report["macs_kept"] == pytest.approx(oneshot.report["macs_kept"], abs=0.05)
    assert result.report["verification"]["mask_equivalent"] is None
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(mnist)
    _assert_plan_relative_to_original(mnist, result.model, result.plan)
    assert evaluate(result.model, val).accuracy >= 0.95


def test_iterative_on_tiny_model_matches_mask():
    model, x = _tiny(), _samples(20)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion="wanda", recover="none",
                                                          schedule="iterative", step=0.2),
                             calib=Dataset({"x": x}))
    assert {t.name for t in result.plan.tensors} == {"a", "r"}
    for entry in result.plan.tensors:
        assert entry.size == 6 and DEAD not in entry.keep and len(entry.keep) < 6
    assert_mask_equivalent(model, result.model, result.plan)


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_iterative_keeps_the_same_channel_counts_as_oneshot(mnist, ratio):
    oneshot = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=ratio, criterion="l2"))
    iterative = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=ratio, criterion="l2", schedule="iterative"))
    assert [g["kept"] for g in iterative.report["groups"]] == [g["kept"] for g in oneshot.report["groups"]]
    assert iterative.report["macs_kept"] == pytest.approx(oneshot.report["macs_kept"], abs=0.05)


# -- loading data --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_arrays():
    with np.load(CALIB) as a:
        return a["input"][:40].copy(), a["labels"][:40].copy()


def test_npz_named_arrays(tmp_path, mnist, mnist_arrays):
    x, y = mnist_arrays
    np.savez(tmp_path / "d.npz", input=x, labels=y)
    ds = load_data(tmp_path / "d.npz", mnist)
    assert len(ds) == 40 and set(ds.inputs) == {"input"}
    np.testing.assert_array_equal(ds.inputs["input"], x)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.labels.dtype == np.int64


def test_npz_single_unnamed_array(tmp_path, mnist, mnist_arrays):
    x, y = mnist_arrays
    np.savez(tmp_path / "d.npz", x, labels=y.astype(np.int32))  # arr_0
    ds = load_data(tmp_path / "d.npz", mnist)
    np.testing.assert_array_equal(ds.inputs["input"], x)
    assert ds.labels.dtype == np.int64
    np.savez(tmp_path / "e.npz", images=x)
    ds = load_data(tmp_path / "e.npz", mnist)
    assert ds.labels is None and len(ds) == 40


def test_npy(tmp_path, mnist, mnist_arrays):
    x, _ = mnist_arrays
    np.save(tmp_path / "d.npy", x)
    ds = load_data(tmp_path / "d.npy", mnist)
    assert ds.labels is None and len(ds) == 40
    feeds, part = next(ds.batches(16))
    np.testing.assert_array_equal(feeds["input"], x[:16])
    assert part == slice(0, 16)
    assert [p.stop - p.start for _, p in ds.batches(16)] == [16, 16, 8]
    assert [p.stop for _, p in ds.batches(16, limit=20)] == [16, 20]


def _two_input_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_npz_two_inputs(tmp_path):
    model = _two_input_model()
    a = np.ones((3, 4), np.float32)
    np.savez(tmp_path / "ok.npz", a=a, b=a * 2)
    ds = load_data(tmp_path / "ok.npz", model)
    assert set(ds.inputs) == {"a", "b"}
    np.savez(tmp_path / "short.npz", a=a, b=np.ones((2, 4), np.float32))
    with pytest.raises(UsageError, match="same"):
        load_data(tmp_path / "short.npz", model)
    np.save(tmp_path / "one.npy", a)
    with pytest.raises(UsageError, match="npz"):
        load_data(tmp_path / "one.npy", model)
    np.savez(tmp_path / "onlya.npz", a=a)
    with pytest.raises(UsageError, match="'b'|b "):
        load_data(tmp_path / "onlya.npz", model)


@pytest.mark.parametrize("case,match", [
    ("dtype", "float32"),
    ("rank", "rank 4"),
    ("static-dim", "dimension 1 must be 1"),
    ("spatial-dim", "dimension 3 must be 28"),
    ("missing-name", "input"),
    ("labels-count", "labels"),
    ("empty", "non-zero"),
    ("npy-dtype", "float32"),
    ("suffix", ".npz"),
    ("missing-file", "does not exist"),
])
def test_bad_data_is_a_usage_error(tmp_path, mnist, mnist_arrays, case, match):
    x, y = mnist_arrays
    path = tmp_path / "d.npz"
    if case == "dtype":
        np.savez(path, input=x.astype(np.float16))  # float64 is cast (a note); float16 is refused
    elif case == "rank":
        np.savez(path, input=x[:, 0])
    elif case == "static-dim":
        np.savez(path, input=np.repeat(x, 3, axis=1))
    elif case == "spatial-dim":
        np.savez(path, input=x[:, :, :, :20])
    elif case == "missing-name":
        np.savez(path, images=x, masks=x)
    elif case == "labels-count":
        np.savez(path, input=x, labels=y[:-1])
    elif case == "empty":
        np.savez(path, input=x[:0])
    elif case == "npy-dtype":
        path = tmp_path / "d.npy"
        np.save(path, (x * 255).astype(np.uint8))
    elif case == "suffix":
        path = tmp_path / "d.csv"
        path.write_text("1,2,3\n")
    elif case == "missing-file":
        path = tmp_path / "nope.npz"
    with pytest.raises(UsageError, match=match) as info:
        load_data(path, mnist)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message


def test_labels_column_vector(tmp_path, mnist):
    with np.load(VAL) as a:
        x, y = a["input"][:50], a["labels"][:50]
    np.savez(tmp_path / "d.npz", input=x, labels=y[:, None])
    try:
        ds = load_data(tmp_path / "d.npz", mnist)
    except UsageError:
        return  # refusing is fine
    want = evaluate(mnist, Dataset({"input": x}, y)).accuracy
    assert evaluate(mnist, ds).accuracy == pytest.approx(want)


# -- image folders -------------------------------------------------------------------------------------------------
def test_image_folder_with_class_subfolders(tmp_path, mnist):
    want_x, want_y = write_mnist_pngs(tmp_path / "imgs")
    ds = load_data(tmp_path / "imgs", mnist, ImageSpec(color="L", mean=(MNIST_MEAN,), std=(MNIST_STD,)))
    assert len(ds) == 20
    np.testing.assert_array_equal(ds.labels, want_y)
    batches = list(ds.batches(8))
    assert [p for _, p in batches] == [slice(0, 8), slice(8, 16), slice(16, 20)]
    x = np.concatenate([f["input"] for f, _ in batches])
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x, want_x, atol=1e-3)  # the PNGs hold the original 8-bit pixels
    assert evaluate(mnist, ds).accuracy >= 0.9
    # calibration over images works like over arrays
    result = onnxprune.prune(mnist, onnxprune.PruneConfig(ratio=0.3, criterion="mean-act", recover="bias"),
                             calib=ds)
    onnx.checker.check_model(result.model, full_check=True)


def test_image_folder_nhwc_and_size(tmp_path):
    """NHWC layout and --size: the arrays follow the model's layout and the requested size."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((10, 12, 3), (10, 20, 30), np.uint8)).save(tmp_path / "imgs" / "a.png")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "nhwc",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 5, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ds = load_data(tmp_path / "imgs", model, ImageSpec(layout="NHWC", color="BGR", scale=1.0))
    assert ds.labels is None  # no class subfolders
    (feeds, _), = ds.batches(4)
    assert feeds["x"].shape == (1, 6, 5, 3)
    np.testing.assert_allclose(feeds["x"][0, 0, 0], [30, 20, 10], atol=1)
    ds = load_data(tmp_path / "imgs", model, ImageSpec(layout="NHWC", size=(4, 7)))
    (feeds, _), = ds.batches(4)
    assert feeds["x"].shape == (1, 4, 7, 3)


def test_empty_image_folder(tmp_path, mnist):
    (tmp_path / "imgs" / "0").mkdir(parents=True)
    (tmp_path / "imgs" / "0" / "readme.txt").write_text("x")
    with pytest.raises(UsageError, match="no images"):
        load_data(tmp_path / "imgs", mnist)


def test_image_folder_needs_single_input_model(tmp_path):
    write_mnist_pngs(tmp_path / "imgs", per_class=1)
    with pytest.raises(UsageError, match="single-input"):
        load_data(tmp_path / "imgs", _two_input_model())


def test_preprocess_spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"size": [32, 48], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
                                "layout": "NHWC", "color": "BGR", "scale": 1.0}))
    spec = ImageSpec.from_file(path)
    assert spec == ImageSpec(size=(32, 48), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), layout="NHWC",
                             color="BGR", scale=1.0)
    path.write_text(json.dumps({"size": 64}))
    assert ImageSpec.from_file(path).size == (64, 64)


def test_preprocess_spec_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"mean": [0.5], "normalise": True, "crop": 3}))
    with pytest.raises(UsageError, match="unknown keys: crop, normalise"):
        ImageSpec.from_file(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        ImageSpec.from_file(path)
    with pytest.raises(UsageError, match="cannot read"):
        ImageSpec.from_file(tmp_path / "missing.json")


def test_preprocess_spec_scalar_mean_and_std(tmp_path, mnist):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"color": "L", "mean": MNIST_MEAN, "std": MNIST_STD}))
    spec = ImageSpec.from_file(path)
    assert spec.mean == (MNIST_MEAN,) and spec.std == (MNIST_STD,)
