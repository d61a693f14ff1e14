"""What a least-squares refit (``--recover lstsq``) reproduces, and the clipped solve behind a ReLU.

A consumer of cut channels is refitted so that, on the pruned network's inputs, its output matches the
original's. Two refinements of that target, both exact where the pruned network can reproduce the original:

* **Residual sums.** When the consumer's output (through its bias ``Add``, if any) is one addend of a residual
  ``Add`` whose other addend is already final (its producer comes first in topological order), the refit
  reproduces the original *sum*: target = original sum - the pruned network's other addend (its errors are
  corrected here instead of being carried on).
* **ReLU.** When the fitted value (the consumer's output or that sum) reaches the network only through a
  ``Relu``, the refit is judged after it: where the original is negative, any value at or below the original's
  costs nothing. The solve alternates between the least-squares fit and moving those targets to the current
  prediction (a few rounds on one factorised Gram matrix).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.core.graph import Graph

__all__ = ["Target", "fit_target", "pick_rows", "residual_target", "ridge_fit", "values_at"]

#: Rounds of the clipped solve behind a ReLU (0: plain least squares on the pre-activation).
RELU_ROUNDS = 8
#: Follow a consumer's output into a residual Add (False: the consumer's own output is the target).
RESIDUAL = True


@dataclass(frozen=True)
class Target:
    """The original's tensor a refit reproduces (``name``), the pruned network's tensor subtracted from it
    (``other``: a residual Add's other addend; ``None``: none), and whether only a Relu reads it."""

    name: str
    other: str | None = None
    relu: bool = False


def fit_target(node: onnx.NodeProto, bias_add: str | None, graph: Graph, later: set[int]) -> Target:
    """The target of refitting ``node`` (``bias_add``: the output of the Add holding its bias, if any).

    ``later``: node indices refitted after this one; a residual Add whose other addend depends on one of them
    is not followed (that addend is not final yet). A residual target includes the consumer's bias.
    """
    value = bias_add or node.output[0]
    name, other = node.output[0], None
    uses = graph.consumer_nodes(value)
    if RESIDUAL and len(uses) == 1 and value not in graph.outputs:
        k, port = uses[0]
        add = graph.nodes[k]
        if (add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.input) == 2
                and graph.shape(add.input[0]) == graph.shape(add.input[1]) is not None
                and not graph.is_const(add.input[1 - port]) and not _depends(graph, add.input[1 - port], later)):
            name, other = add.output[0], add.input[1 - port]
    uses = graph.consumer_nodes(name)
    relu = (len(uses) == 1 and name not in graph.outputs
            and graph.nodes[uses[0][0]].op_type == "Relu" and graph.nodes[uses[0][0]].domain in ("", "ai.onnx"))
    return Target(name, other, relu)


def _depends(graph: Graph, name: str, nodes: set[int]) -> bool:
    """Whether tensor ``name`` is computed from the output of any of ``nodes``."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        t = stack.pop()
        if t in seen or t not in graph.producer:
            continue
        seen.add(t)
        i = graph.producer[t]
        if i in nodes:
            return True
        stack.extend(n for n in graph.nodes[i].input if n)
    return False


def pick_rows(y: np.ndarray, mine: np.ndarray, where: tuple[np.ndarray, ...], tokens: bool) -> np.ndarray:
    """Rows [positions, channels] of one sample's tensor ``y`` (channels first, or last with ``tokens``) at
    the regression rows ``mine`` of a plan's ``where`` (sample, position...)."""
    if tokens:
        return y.reshape(-1, y.shape[-1])[where[1][mine]]
    if len(where) == 3:
        return y[:, where[1][mine], where[2][mine]].T
    return y.reshape(1, -1)


def values_at(batches: Iterable[tuple[int, np.ndarray]], where: tuple[np.ndarray, ...], tokens: bool
              ) -> np.ndarray | None:
    """A tensor shaped like a consumer's output, at the regression rows ``where`` (sample, position...), from
    ``(offset of the batch among the plan's samples, batch values)``."""
    values: np.ndarray | None = None
    for start, y in batches:
        for k in range(y.shape[0]):
            mine = where[0] == start + k
            if mine.any():
                picked = pick_rows(y[k], mine, where, tokens)
                if values is None:
                    values = np.zeros((len(where[0]), picked.shape[1]))
                values[np.nonzero(mine)[0]] = picked
    return values


def residual_target(target: np.ndarray, other: np.ndarray | None, bias: np.ndarray | None, relu: bool
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(what the refitted output must equal, the rows judged only above a bound behind a ReLU or ``None``, the
    offset added to the refitted output before the sum) from the original's ``target`` [rows, outputs], the
    pruned network's ``other`` addend and the ``bias`` the target also holds (a MatMul's bias Add)."""
    offset = np.zeros(target.shape)
    if other is not None:
        offset = offset + other.astype(np.float64)
    if bias is not None:
        offset = offset + bias.astype(np.float64).reshape(-1)
    target = target.astype(np.float64)
    return target - offset, (target <= 0) if relu else None, offset


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float, clip: np.ndarray | None = None,
              floor: np.ndarray | None = None) -> np.ndarray | None:
    """Ridge least squares ``theta`` [inputs, outputs] of ``x @ theta ~ y``; ``None`` when it fails.

    ``clip`` (a boolean mask like ``y``) marks the targets only judged above a bound (behind a ReLU, where the
    original is not positive): a prediction at or below ``floor`` there (the value the ReLU zeroes from; ``y``
    itself when ``None``) costs nothing.
    """
    gram = x.T @ x
    d = gram.shape[0]
    damp = ridge * max(float(np.trace(gram)) / d, 1e-12)
    try:
        factor = np.linalg.cholesky(gram + damp * np.eye(d))
    except np.linalg.LinAlgError:
        return None

    def solve(t: np.ndarray) -> np.ndarray:
        return np.linalg.solve(factor.T, np.linalg.solve(factor, x.T @ t))

    theta = solve(y)
    if clip is not None and clip.any():
        bound = y if floor is None else floor
        for _ in range(RELU_ROUNDS):
            pred = x @ theta
            theta = solve(np.where(clip, np.where(pred <= bound, pred, y), y))
    return theta if np.all(np.isfinite(theta)) else None
