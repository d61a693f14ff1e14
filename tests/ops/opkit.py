"""Helpers for the per-handler tests in ``tests/ops``: a hand-written plan applied through the public API, the
constants feeding a node read back by node name, and the MACs ``count_macs`` gives one node.

Everything here reads protobufs with ``onnx.numpy_helper``; nothing borrows from the code under test except the
public entry points (``onnxprune.analyze``, ``onnxprune.apply_plan``, ``onnxprune.Plan``, ``count_macs``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from conftest import assert_mask_equivalent, input_shapes
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.core.graph import checker_view
from onnxprune.measure.macs import count_macs

OUT = "reaches graph output"


def groups(model: onnx.ModelProto) -> list[tuple[int, str | None]]:
    """(size, blocked reason) of every group, in id order."""
    return [(g.size, g.blocked) for g in onnxprune.analyze(model).groups]


def assert_groups(model: onnx.ModelProto, want: Sequence[tuple[int, str | None]]) -> None:
    """Group sizes equal ``want``'s; a group is prunable where ``want`` says None, else its reason contains it."""
    got = groups(model)
    assert [s for s, _ in got] == [s for s, _ in want], got
    for (_, reason), (_, needle) in zip(got, want):
        if needle is None:
            assert reason is None, got
        else:
            assert reason is not None and needle in reason, (reason, needle)


def plan(*entries: tuple) -> onnxprune.Plan:
    """A plan from ``(tensor, size, keep)`` or ``(tensor, size, keep, axis)`` entries (axis 1 by default)."""
    tensors = []
    for entry in entries:
        name, size, keep = entry[:3]
        axis = entry[3] if len(entry) > 3 else 1
        tensors.append({"name": name, "axis": axis, "size": size, "keep": sorted(keep)})
    return onnxprune.Plan.from_dict({"format": "onnxprune.plan/1", "model_sha256": None, "tensors": tensors})


def cut(model: onnx.ModelProto, *entries: tuple):
    """Apply a hand-written plan; the result must pass the checker, the library's verification and the
    independent mask oracle of conftest. Returns the ``PruneResult``."""
    result = onnxprune.apply_plan(model, plan(*entries))
    onnx.checker.check_model(checker_view(result.model, light=False), full_check=True)  # onnxruntime's ops: stand-ins
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    return result


def kept(result, tensor: str) -> list[int] | None:
    """The kept indices the result's plan lists for ``tensor`` (None when the tensor did not shrink)."""
    for t in result.plan.tensors:
        if t.name == tensor:
            return list(t.keep)
    return None


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


def attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def const(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of an initializer or a Constant node's output."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise KeyError(name)


def port(model: onnx.ModelProto, node_name: str, k: int) -> np.ndarray:
    """The constant on input ``k`` of the node named ``node_name``."""
    return const(model, node(model, node_name).input[k])


def macs(model: onnx.ModelProto, node_name: str) -> int:
    """MACs ``count_macs`` gives the node named ``node_name`` (batch 1 where the batch is symbolic)."""
    return count_macs(model, input_shapes(model, batch=1))[1].get(node_name, 0)


def name_of(output: str) -> str:
    """The node name of a GraphBuilder op from its output tensor (``conv_3_out`` -> ``conv_3``)."""
    return output[: -len("_out")] if output.endswith("_out") else output.rsplit("_out", 1)[0]


def declared(model: onnx.ModelProto, widths: dict[str, int], lead: Sequence[int] = (1, 5)) -> onnx.ModelProto:
    """A copy with value_info [*lead, width] for tensors onnx shape inference cannot type (past a contrib op):
    the mask oracle reads ranks from it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, width in widths.items():
        out.graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [*lead, width]))
    return out
