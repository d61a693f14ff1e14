"""Least-squares recovery in waves (onnxprune.rewriting.lstsq) over Steppers that run each node once
(onnxprune.measure.stepper): the same refit as one consumer after the other, each from the model's inputs."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from builders import bottleneck, tiny_transformer
from onnx import numpy_helper

import onnxprune
from onnxprune.measure import stepper as stepper_module
from onnxprune.measure.data import Dataset
from onnxprune.rewriting import lstsq, targets


def _transformer_data(n: int = 24) -> tuple[onnx.ModelProto, Dataset]:
    model = tiny_transformer(layers=2, vocab=10)
    ids = np.random.default_rng(0).integers(0, 10, (n, 5)).astype(np.int64)
    return model, Dataset(inputs={"ids": ids})


def _conv_data(n: int = 40) -> tuple[onnx.ModelProto, Dataset]:
    model = bottleneck()
    return model, Dataset(inputs={"x": np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)})


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each node's inputs' constant values by (node output, port): recovered initializers are renamed."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {(n.output[0], k): inits[x] for n in model.graph.node for k, x in enumerate(n.input) if x in inits}


def _prune(model: onnx.ModelProto, data: Dataset) -> onnx.ModelProto:
    config = onnxprune.PruneConfig(ratio=0.5, criterion="l2", recover="lstsq", verify=False)
    return onnxprune.prune(model, config, calib=data).model


def test_waves_put_parallel_consumers_together() -> None:
    """Q, K and V read the same normed input: one wave; O, the MLP's up and down, and the next layer follow."""
    model = tiny_transformer(layers=1, vocab=10)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in
               {t.name for t in model.graph.initializer}]
    consumers = [SimpleNamespace(node=n) for n in matmuls]  # Wq, Wk, Wv, Wo, Wup, Wdown, Wcls
    assert lstsq.waves(model, consumers) == [[0, 1, 2], [3], [4], [5], [6]]  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [_transformer_data, _conv_data], ids=["transformer", "conv"])
def test_waves_refit_what_one_by_one_refits(build, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waves over cached frontiers give the weights a refit of one consumer at a time, each on the pruned model
    run from its inputs (no frontier kept), gives (the clipped solve behind a ReLU left out: its alternating
    rounds amplify the last-bit differences of onnxruntime's fusions)."""
    monkeypatch.setattr(targets, "RELU_ROUNDS", 0)
    model, data = build()
    waved = _weights(_prune(model, data))
    monkeypatch.setattr(lstsq, "waves", lambda m, consumers, after=None: [[k] for k in range(len(consumers))])
    monkeypatch.setattr(lstsq, "Stepper", functools.partial(stepper_module.Stepper, cache_bytes=0))
    one_by_one = _weights(_prune(model, data))
    assert waved.keys() == one_by_one.keys()
    refitted = [k for k in waved if "_recovered_" in str(k)] or list(waved)
    for key, value in waved.items():
        np.testing.assert_allclose(value, one_by_one[key], rtol=1e-4, atol=1e-4, err_msg=str(key))  # fusions differ
    assert refitted


def test_each_node_runs_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass builds one small session on the nodes between the kept frontier and the wave's tensors: over
    the whole refit each stepper runs each node of its model at most once, in one session per wave."""
    model, data = _transformer_data()
    built: list[int] = []
    real = stepper_module.InputSession

    def counting(light: onnx.ModelProto, *args, **kwargs):
        built.append(len(light.graph.node))
        return real(light, *args, **kwargs)

    monkeypatch.setattr(stepper_module, "InputSession", counting)
    result = _prune(model, data)
    refitted = [n for n in result.graph.node if n.op_type == "MatMul" and "_recovered_" in n.input[1]]
    assert len(refitted) == 13  # Wq, Wk, Wv, Wo, Wup, Wdown per layer, the classifier
    assert 0 < len(built) <= 2 * 9  # two steppers, a session per wave at most: QKV, O, up, down per layer, classifier
    assert sum(built) <= len(model.graph.node) + len(result.graph.node)  # the pruned one has its own norms


def test_the_rows_space_solution_is_the_ridge_solution() -> None:
    """With fewer rows than unknowns the refit solves (X X^T + damp I) A = Y and takes W = X^T A: the solution
    of (X^T X + damp I) W = X^T Y, the same damp."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((20, 50)), np.ones((20, 1))], axis=1)
    y = rng.standard_normal((20, 7))
    primal = lstsq._ridge(x.T @ x, x.T @ y, float(np.trace(x.T @ x)), 51)
    alpha = lstsq._ridge(x @ x.T, y, float(np.square(x).sum()), 51)
    assert primal is not None and alpha is not None
    np.testing.assert_allclose(x.T @ alpha, primal, rtol=1e-8, atol=1e-10)


def test_the_rows_space_refit_gives_the_normal_equations_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    """One sample of 5 tokens: fewer rows than unknowns for the wider consumers; solved in the rows' space or
    through X^T X, the refitted weights agree."""
    model, data = _transformer_data(1)
    plain = _weights(_prune(model, data))
    used = []

    def rows_space(self, width: int, outputs: int) -> bool:
        used.append(len(self.where[0]) < width + self.intercept)
        return used[-1]

    monkeypatch.setattr(lstsq._Rows, "dual", rows_space)
    dual = _weights(_prune(model, data))
    assert any(used) and dual.keys() == plain.keys()
    for key, value in dual.items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-4, atol=1e-5, err_msg=str(key))


def test_a_residual_refit_waits_for_the_other_addend() -> None:
    """B and C read x; C fits the sum B + C (targets.py): it must come after B is refitted."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["x", "wb"], ["b"], name="B"),
             helper.make_node("Conv", ["x", "wc"], ["c"], name="C"), helper.make_node("Add", ["b", "c"], ["s"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2, 3, 3])])
    model = helper.make_model(graph)
    consumers = [SimpleNamespace(node=n) for n in nodes[:2]]
    assert lstsq.waves(model, consumers) == [[0, 1]]  # type: ignore[arg-type]
    assert lstsq.waves(model, consumers, {1: "b"}) == [[0], [1]]  # type: ignore[arg-type]
