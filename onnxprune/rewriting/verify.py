"""Verification of a pruned model: full checker, onnxruntime load and run, unchanged interface, and mask
equivalence against the original (the plan's contract)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.core.graph import Graph, checker_view
from onnxprune.core.handlers import zero_code
from onnxprune.core.modelio import EXTERNAL_DATA_THRESHOLD, _data_bytes, in_place
from onnxprune.errors import UnsupportedError, VerificationError
from onnxprune.measure.exact import continuous_activations, exact_integer_ops
from onnxprune.measure.runtime import Session, random_inputs
from onnxprune.planning.plan import Plan

__all__ = ["Verification", "verify", "check_model", "masked_edit", "relative_error"]


@dataclass(frozen=True)
class Verification:
    """The outcome of a verification that passed, and the largest relative error seen per output.

    :func:`verify` raises on the first failed check, so a ``Verification`` exists only when the checker, the
    onnxruntime run and the interface comparison passed; ``mask_equivalent`` is ``None`` when mask
    equivalence was not checked (recovery or training changed the weights).
    """

    mask_equivalent: bool | None
    max_rel_error: float
    per_output: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report entry (``checker``, ``onnxruntime`` and ``interface_unchanged`` are always true)."""
        return {"checker": True, "onnxruntime": True, "interface_unchanged": True,
                "mask_equivalent": self.mask_equivalent, "max_rel_error": self.max_rel_error,
                "per_output": self.per_output}


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with full (strict shape-inference) checking; a light copy for models over 2 GB, and for
    models holding onnxruntime's ops of the default domain (:func:`~onnxprune.core.graph.checker_view`)."""
    large = _data_bytes(model) >= EXTERNAL_DATA_THRESHOLD or any(in_place(t) for t in model.graph.initializer)
    target = checker_view(model, light=large)  # weights read in place stay where they are
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"pruned model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from exc


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (exact comparison for non-float outputs)."""
    if got.shape != want.shape:
        return float("inf")
    if not np.issubdtype(want.dtype, np.floating):
        return 0.0 if np.array_equal(got, want) else float("inf")
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not (np.isfinite(g).all() and np.isfinite(w).all()):
        same = np.array_equal(np.isnan(g), np.isnan(w)) and np.allclose(g[np.isfinite(w)], w[np.isfinite(w)])
        return 0.0 if same else float("inf")
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-12)
    return float(np.abs(g - w).max(initial=0.0)) / scale


def masked_edit(plan: Plan, graph: Graph) -> Callable[[onnx.ModelProto], None]:
    """An edit for :class:`Session` that multiplies each plan tensor by its keep-mask right after it is made
    (written as ``Where(mask, x, 0)`` from opset 9 on, so that a removed channel's inf or NaN cannot leak
    through 0 * inf; as ``Mul`` before)."""
    def edit(light: onnx.ModelProto) -> None:
        entries = {t.name: t for t in plan.tensors}
        nodes = list(light.graph.node)
        del light.graph.node[:]
        for node in nodes:
            masked_here = [o for o in node.output if o in entries]
            renamed = node
            if masked_here:
                renamed = onnx.NodeProto()
                renamed.CopyFrom(node)
                for k, o in enumerate(renamed.output):
                    if o in entries:
                        renamed.output[k] = o + "__unmasked"
            light.graph.node.append(renamed)
            for o in masked_here:
                t = entries[o]
                rank = graph.rank(o)
                if rank is None:
                    raise VerificationError(f"cannot verify: rank of '{o}' unknown")
                flat = np.zeros(t.size, dtype=bool)
                flat[list(t.keep)] = True
                mask = flat.reshape([t.size] + [1] * (rank - 1 - t.axis))
                dtype = helper.tensor_dtype_to_np_dtype(graph.elem_type(o) or TensorProto.FLOAT)
                zero = _zero(graph, o, t.size, mask.shape, dtype)  # quantized codes: the code of 0.0
                if graph.opset() >= 9:  # Where exists from opset 9
                    light.graph.initializer.append(onnx.numpy_helper.from_array(mask, o + "__keep"))
                    if isinstance(zero, np.ndarray):
                        light.graph.initializer.append(onnx.numpy_helper.from_array(zero, o + "__zero"))
                    inputs, op = [o + "__keep", o + "__unmasked", zero if isinstance(zero, str) else o + "__zero"], \
                        "Where"
                else:
                    light.graph.initializer.append(onnx.numpy_helper.from_array(mask.astype(dtype), o + "__keep"))
                    inputs, op = [o + "__unmasked", o + "__keep"], "Mul"
                light.graph.node.append(helper.make_node(op, inputs, [o], name=o + "__mask"))
    return edit


def _exact(edit: Callable[[onnx.ModelProto], None] | None, constants: set[str]) -> Callable[[onnx.ModelProto], None]:
    """``edit`` between the checked forms of quantized graphs (:mod:`onnxprune.measure.exact`): activation Q/DQ
    pairs unrounded before, integer ops in their exact uint8 form after."""
    def both(light: onnx.ModelProto) -> None:
        continuous_activations(light, constants)  # QDQ: activations unrounded (a last-bit difference is one code)
        if edit is not None:
            edit(light)
        exact_integer_ops(light)
    return both


def _zero(graph: Graph, name: str, size: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray | str:
    """What a removed channel of ``name`` holds in the masked original: 0, or a quantized tensor's zero point
    (a constant per tensor or per channel, or a computed tensor's name)."""
    zero = zero_code(graph, name)
    if zero is None or isinstance(zero, str):
        return np.zeros((), dtype) if zero is None else zero
    if zero.size == 1:
        return zero.reshape(()).astype(dtype)
    if zero.size != size:
        raise VerificationError(f"cannot verify: '{name}' has a per-channel zero point along another axis")
    return zero.reshape(shape).astype(dtype)


def _interface(model: onnx.ModelProto) -> list[tuple[str, str]]:
    inits = {t.name for t in model.graph.initializer}
    return [(vi.name, vi.type.SerializeToString().hex()) for vi in model.graph.input if vi.name not in inits] + \
           [("->" + vi.name, vi.type.SerializeToString().hex()) for vi in model.graph.output]


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, plan: Plan | None, *, graph: Graph | None = None,
           seed: int = 0, input_shapes: dict[str, list[int]] | None = None, tolerance: float = 1e-4,
           mask_check: bool = True) -> Verification:
    """Check ``pruned`` against ``original``; raise :class:`VerificationError` on the first failure.

    ``mask_check=False`` (weights changed by recovery or training) checks validity and the interface only."""
    check_model(pruned)
    if _interface(original) != _interface(pruned):
        raise VerificationError("pruned model changed the graph's input or output names, types or shapes")
    if mask_check and plan is None:
        raise ValueError("mask equivalence is checked against a plan: give one, or mask_check=False")
    feeds = random_inputs(original, seed, input_shapes)
    graph = graph or Graph.build(original)
    edit = masked_edit(plan, graph) if plan is not None and mask_check else None
    try:  # integer ops in their exact form (onnxruntime's u8s8 kernels saturate pairs of products)
        stored = set(graph.initializers) | set(graph.constant_nodes)
        want = Session(original, edit=_exact(edit, stored), optimize=False, arrays=graph.const).run(feeds)
    except Exception as exc:  # noqa: BLE001 - tell a model onnxruntime cannot run from a broken mask
        _require_runnable(original, graph, feeds)
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"onnxruntime cannot run the masked original: {_line(exc)}") from exc
    try:
        stored = {t.name for t in pruned.graph.initializer}
        got = Session(pruned, edit=_exact(None, stored), optimize=False).run(feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure is a verification failure
        raise VerificationError(f"onnxruntime cannot run the pruned model: {_line(exc)}") from exc
    names = [o.name for o in original.graph.output]
    if not mask_check:
        return Verification(None, 0.0)
    errors = {n: relative_error(g, w) for n, g, w in zip(names, got, want)}
    worst = max(errors.values(), default=0.0)
    tol = max(tolerance, 1e-2) if any(o.type.tensor_type.elem_type == TensorProto.FLOAT16
                                      for o in original.graph.output) else tolerance
    if worst > tol:
        bad = max(errors, key=lambda n: errors[n])
        raise VerificationError(
            f"pruned model is not mask-equivalent to the original: output '{bad}' differs by "
            f"{errors[bad]:.3g} (relative, tolerance {tol:g})")
    return Verification(True, worst, errors)


def _require_runnable(original: onnx.ModelProto, graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    """Raise :class:`UnsupportedError` when onnxruntime cannot run the original model at all."""
    try:
        Session(original, optimize=False, arrays=graph.const).run(feeds)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedError(f"cannot verify: onnxruntime cannot run the input model ({_line(exc)}); "
                               "prune with --no-verify to skip verification") from exc


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
