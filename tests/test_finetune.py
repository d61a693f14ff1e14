"""Fine-tuning through the torch bridge: distillation without labels, cross-entropy, best-epoch selection,
determinism, the finetune command, the training schedules' mechanics, the taylor criterion and torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
from conftest import needs

torch = pytest.importorskip("torch", reason=needs("torch"))

import builders  # noqa: E402
from conftest import EXAMPLE_MODEL, ROOT  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.analysis.dependency import analyze  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.core.graph import Graph  # noqa: E402
from onnxprune.errors import UsageError  # noqa: E402
from onnxprune.measure.data import Dataset, load_data  # noqa: E402
from onnxprune.measure.evaluate import evaluate  # noqa: E402
from onnxprune.training.bridge import OnnxModule  # noqa: E402
from onnxprune.training.finetune import FinetuneConfig, finetune, resolved_lr_schedule  # noqa: E402
from onnxprune.training.schedules import BalancedRegularizer, DropNet  # noqa: E402

CALIB, VAL = ROOT / "models" / "mnist_calib.npz", ROOT / "models" / "mnist_val.npz"
QUICK = FinetuneConfig(epochs=2, batch_size=32, lr=1e-3)


@pytest.fixture(scope="module")
def example():
    model = onnx.load(EXAMPLE_MODEL)
    calib, val = load_data(CALIB, model), load_data(VAL, model)
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.6), calib=calib).model
    return model, pruned, calib, val


def _unlabelled(data: Dataset) -> Dataset:
    return Dataset(dict(data.inputs))


def test_distillation_without_labels_recovers_fidelity(example):
    model, _, calib, val = example
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model  # no recovery: much to regain
    result = finetune(pruned, _unlabelled(val), QUICK, teacher=model, eval_data=_unlabelled(calib))
    start, best = result.history[0]["eval"], result.history[result.best_epoch]["eval"]
    assert start["accuracy"] is None and start["agreement"] is not None
    assert result.best_epoch > 0 and best["agreement"] > start["agreement"]
    assert evaluate(result.model, calib, model).agreement == pytest.approx(best["agreement"])
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.output for n in result.model.graph.node] == [n.output for n in pruned.graph.node]


def test_cross_entropy_on_labels(example):
    _, pruned, calib, val = example
    result = finetune(pruned, calib, replace(QUICK, loss="ce"), eval_data=val)
    assert result.history[-1]["loss"] < result.history[1]["loss"] or result.best_epoch > 0
    assert result.history[result.best_epoch]["eval"]["accuracy"] >= result.history[0]["eval"]["accuracy"]


def test_losses_need_what_they_use(example):
    model, pruned, calib, _ = example
    with pytest.raises(UsageError, match="teacher"):
        finetune(pruned, calib, replace(QUICK, loss="distill"))
    with pytest.raises(UsageError, match="labels"):
        finetune(pruned, _unlabelled(calib), QUICK)
    with pytest.raises(UsageError, match="optimizer"):
        finetune(pruned, calib, replace(QUICK, optimizer="lbfgs"), teacher=model)


def test_same_seed_same_bytes_and_best_epoch_kept(example):
    model, pruned, calib, val = example
    config = replace(QUICK, epochs=1)
    a = finetune(pruned, calib, config, teacher=model)
    b = finetune(pruned, calib, config, teacher=model)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    # a learning rate that wrecks the weights: the untouched epoch 0 stays the best and is returned
    wrecked = finetune(pruned, calib, replace(config, lr=50.0, optimizer="sgd"), teacher=model, eval_data=val)
    assert wrecked.best_epoch == 0
    assert evaluate(wrecked.model, val).accuracy == pytest.approx(evaluate(pruned, val).accuracy)


def test_finetune_command(tmp_path, example, capsys):
    model, pruned, _, _ = example
    onnx.save(pruned, tmp_path / "small.onnx")
    out, report = tmp_path / "tuned.onnx", tmp_path / "report.json"
    code = main([
        "finetune", str(tmp_path / "small.onnx"), "--data", str(CALIB), "--teacher", str(EXAMPLE_MODEL),
        "--eval", str(VAL), "--epochs", "1", "--batch-size", "64", "-o", str(out), "--report", str(report)])
    assert code == 0
    tuned = onnx.load(out)
    onnx.checker.check_model(tuned, full_check=True)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in pruned.graph.node]
    doc = json.loads(report.read_text())
    assert doc["options"]["epochs"] == 1 and len(doc["history"]) == 2 and doc["evaluation"]["accuracy"] > 0.5
    assert "epoch 1" in capsys.readouterr().err


def test_finetune_command_errors(tmp_path, example, capsys):
    _, pruned, _, _ = example
    onnx.save(pruned, tmp_path / "small.onnx")
    np.savez(tmp_path / "unlabelled.npz", input=np.load(CALIB)["input"])
    assert main(["finetune", str(tmp_path / "small.onnx"), "--data", str(tmp_path / "unlabelled.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxprune: error:") and "labels" in err and len(err.strip().splitlines()) == 1
    assert main(["finetune", str(tmp_path / "small.onnx")]) == 2
    assert main(["finetune", str(tmp_path / "missing.onnx"), "--data", str(CALIB)]) == 1
    assert not (tmp_path / "small.finetuned.onnx").exists()


def test_dropnet_schedule_prunes_and_fine_tunes(example):
    model, _, calib, val = example
    hooks = DropNet(model, val, calib, QUICK, kappa=0.5)
    config = onnxprune.PruneConfig(ratio=0.5, schedule="dropnet", step=0.3, calib_samples=256)
    result = onnxprune.prune(model, config, calib=val, eval_data=calib, hooks=hooks)
    training = result.report["training"]
    assert training["schedule"] == "dropnet" and training["planned_steps"] == 2
    assert [s["accepted"] for s in training["steps"]] == [True, True]
    assert result.report["macs_kept"] < 0.4 and result.report["options"]["criterion"] == "mean-act"
    assert result.verification is not None and result.verification.mask_equivalent is None


def test_dropnet_stops_below_kappa(example, monkeypatch):
    model, _, calib, val = example
    hooks = DropNet(model, calib, val, replace(QUICK, epochs=1), kappa=0.9)
    monkeypatch.setattr(hooks, "_evaluate", lambda m: 0.1)  # every step "loses" accuracy
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, schedule="dropnet"), calib=calib,
                             hooks=hooks)
    assert result.report["training"]["steps"] == [{"step": 1, "metric": 0.1, "accepted": False, "retrained": True}]
    assert result.report["macs_kept"] == 1.0 and not result.plan.tensors


def test_dropnet_retrains_a_step_short_of_kappa_once(example, monkeypatch):
    model, _, calib, val = example
    hooks = DropNet(model, calib, val, replace(QUICK, epochs=1), kappa=0.9)
    metrics = iter([0.1, 1.0])  # the first step settles only after a second round of training
    monkeypatch.setattr(hooks, "_evaluate", lambda m: next(metrics, 1.0))
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, schedule="dropnet"), calib=calib,
                             hooks=hooks)
    steps = result.report["training"]["steps"]
    assert steps[0] == {"step": 1, "metric": 1.0, "accepted": True, "retrained": True}
    assert all(s["accepted"] and not s["retrained"] for s in steps[1:]) and result.report["macs_kept"] < 0.5


def test_training_schedules_need_hooks(example):
    model, _, calib, _ = example
    with pytest.raises(UsageError, match="training data"):
        onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, schedule="auto-balanced"), calib=calib)


def test_balanced_regularizer_is_zero_and_pushes_apart():
    model = builders.conv_bn_relu_chain(seed=0)
    analysis = analyze(Graph.build(model))
    kept = {g.id: g.size // 2 for g in analysis.groups if g.prunable}
    reg = BalancedRegularizer(analysis, kept, alpha=5e-4)
    module = OnnxModule(model)
    value = reg(module)
    assert abs(float(value)) < 1e-9  # auto-balanced: zero at the current weights
    value.backward()
    gid = next(iter(reg.rows))
    name, idx, local = reg.rows[gid][0]
    weight = module.weight(name).detach().reshape(-1)[torch.from_numpy(idx)]
    grad = module.weight(name).grad.reshape(-1)[torch.from_numpy(idx)]
    scores = reg.scores(model)[gid][local]
    theta = np.sort(reg.scores(model)[gid])[::-1][kept[gid] - 1]
    along = (weight * grad).sum(dim=1).numpy()  # > 0: gradient descent shrinks the filter
    assert np.all(along[scores < theta] > 0) and np.all(along[scores >= theta] < 0)


def test_taylor_criterion(example):
    model, _, calib, _ = example
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion="taylor", recover="none"),
                             calib=calib)
    assert result.report["options"]["criterion"] == "taylor" and result.verification.mask_equivalent
    other = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion="l2", recover="none"))
    assert result.plan.to_json() != other.plan.to_json()


def test_torchrun_two_processes_match_one(tmp_path, example):
    """DistributedDataParallel over gloo: 2 CPU processes give the single-process weights (up to rounding)."""
    model, pruned, _, _ = example
    onnx.save(pruned, tmp_path / "small.onnx")
    args = ["finetune", str(tmp_path / "small.onnx"), "--data", str(CALIB), "--teacher", str(EXAMPLE_MODEL),
            "--epochs", "1", "--batch-size", "64", "--lr", "1e-3", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "onnxprune.cli", *args, "-o", str(tmp_path / "one.onnx")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "onnxprune.cli", *args, "-o", str(tmp_path / "two.onnx")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one, two = onnx.load(tmp_path / "one.onnx"), onnx.load(tmp_path / "two.onnx")
    before = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    moved = 0
    for a, b in zip(one.graph.initializer, two.graph.initializer):
        x, y = onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-5 * max(float(np.abs(x).max()), 1.0))
        moved += not np.array_equal(x, before[a.name])
    assert moved > 0


def test_pinned_batch_trains_in_micro_batches():
    """A graph with a hard-coded batch of 1 (Reshape to [1, 8]) trains sample by sample."""
    model = builders.reshape_gemm(seed=0)
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    data = Dataset({"x": x})
    result = finetune(pruned, data, FinetuneConfig(epochs=2, batch_size=4), teacher=model, eval_data=data)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.history[-1]["loss"] < result.history[1]["loss"] or result.best_epoch > 0
    assert evaluate(result.model, data, model).rel_error <= evaluate(pruned, data, model).rel_error


def test_finetune_command_names_ops_the_bridge_lacks(tmp_path, capsys):
    model = builders.unsupported_op(seed=0)
    onnx.save(model, tmp_path / "cumsum.onnx")
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    before = (tmp_path / "cumsum.onnx").read_bytes()
    code = main(["finetune", str(tmp_path / "cumsum.onnx"), "--data", str(tmp_path / "data.npz"),
                 "--teacher", str(tmp_path / "cumsum.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == "onnxprune: error: the torch bridge does not support these ops: CumSum"
    assert (tmp_path / "cumsum.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cumsum.onnx", "data.npz"]


def test_prune_training_schedule_needs_data(capsys):
    assert main([str(EXAMPLE_MODEL), "--schedule", "dropnet", "--ratio", "0.5"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main([str(EXAMPLE_MODEL), "--ratio", "0.5", "--data", str(CALIB)]) == 2
    assert "--schedule dropnet" in capsys.readouterr().err


def test_cosine_schedule_and_sgd_train():
    model = builders.reshape_gemm(seed=1)
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    data = Dataset({"x": np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)})
    constant = finetune(pruned, data, FinetuneConfig(epochs=2, batch_size=4, lr_schedule="constant"), teacher=model)
    cosine = finetune(pruned, data, FinetuneConfig(epochs=2, batch_size=4, lr_schedule="cosine"), teacher=model)
    auto = finetune(pruned, data, FinetuneConfig(epochs=2, batch_size=4), teacher=model)  # the default
    sgd = finetune(pruned, data, FinetuneConfig(epochs=2, batch_size=4, optimizer="sgd", lr=1e-2), teacher=model)
    blobs = {r.model.SerializeToString() for r in (constant, cosine, sgd)}
    assert len(blobs) == 3 and pruned.SerializeToString() not in blobs
    assert auto.model.SerializeToString() == cosine.model.SerializeToString()  # one run: cosine
    assert resolved_lr_schedule(FinetuneConfig(), repeated=True).lr_schedule == "constant"  # schedules' steps
    with pytest.raises(UsageError, match="lr-schedule"):
        FinetuneConfig(lr_schedule="step").validate()
