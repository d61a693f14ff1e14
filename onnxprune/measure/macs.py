"""Counting: multiply-accumulates of the ops that carry weights (from their handlers), and parameter counts."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune.core.graph import light_model, node_label
from onnxprune.core.handlers import Handler, handler_for
from onnxprune.core.inference import fold_small

__all__ = ["counted", "concrete_shapes", "count_macs", "count_params"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every floating-point constant (initializers and Constant nodes)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type in _FLOAT_TYPES:
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                    total += int(np.prod(a.t.dims)) if len(a.t.dims) else 1
    return total


def counted(node: onnx.NodeProto) -> bool:
    """Whether the node's handler counts MACs for it (the ops that carry weights; the rest are free)."""
    handler = handler_for(node)
    return handler is not None and type(handler).macs is not Handler.macs


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> tuple[int, dict[str, int]]:
    """Total MACs of the counted ops (each handler's :meth:`~onnxprune.core.handlers.Handler.macs`) for concrete
    inputs, and MACs per node label."""
    shapes = concrete_shapes(model, input_shapes)
    per_node: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        handler = handler_for(node)
        macs = handler.macs(node, shapes) if handler is not None and node.output else 0
        if macs:
            per_node[node_label(node, i)] = macs
    return sum(per_node.values()), per_node


def concrete_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Concrete shapes of the tensors shape inference reaches for these input shapes (and of the inputs and
    outputs of every Conv/Gemm/MatMul, measured in onnxruntime where inference stops)."""
    light = light_model(model)
    for vi in light.graph.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    del light.graph.value_info[:]
    try:
        light = onnx.shape_inference.infer_shapes(fold_small(light), data_prop=True)
    except Exception:  # noqa: BLE001 - counting is best effort
        pass
    shapes = {}
    for vi in list(light.graph.input) + list(light.graph.value_info) + list(light.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = list(node.attribute[0].t.dims)
    missing = [n for node in model.graph.node if counted(node)
               for n in (node.input[0], node.output[0]) if n not in shapes]
    if missing:
        shapes.update(_measured_shapes(model, input_shapes, sorted(set(missing))))
    return shapes


def _measured_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]], names: list[str]
                     ) -> dict[str, list[int]]:
    """Shapes shape inference could not reach (computed Slice bounds, say), read off one onnxruntime run."""
    from onnxprune.measure.runtime import (  # the runtime imports graph helpers, not vice versa
        Session,
        expose,
        random_inputs,
    )

    try:
        session = Session(model, edit=expose(names), optimize=False)
        wanted = session.output_names()
        values = session.run(random_inputs(model, shapes=input_shapes))
    except Exception:  # noqa: BLE001 - counting stays best effort
        return {}
    return {n: list(v.shape) for n, v in zip(wanted, values) if n in names}
