"""Counting: multiply-accumulates of the ops that carry weights (from their handlers), and parameter counts."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune.core.graph import light_model, node_label
from onnxprune.core.handlers import Handler, handler_for
from onnxprune.core.inference import fold_small

__all__ = ["counted", "concrete_shapes", "count_macs", "count_params", "params_by_type"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


#: Integer element types that hold quantized weights (codes and zero points), by the name the summary shows.
_CODE_TYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.INT16: "int16",
               TensorProto.UINT16: "int16", TensorProto.INT4: "int4", TensorProto.UINT4: "int4"}
#: Ops that read int32 quantized biases (at these ports) and packed low-bit weights (port, bits attribute).
_INT32_BIAS_PORTS = {"DequantizeLinear": 0, "QLinearConv": 8, "QGemm": 6}
_PACKED = {"MatMulNBits": (1, "bits")}


def count_params(model: onnx.ModelProto) -> int:
    """Parameters: elements of every floating-point constant (initializers and Constant nodes) and of every
    quantized weight (integer codes and zero points, int32 biases of quantized ops, packed 4-bit weights)."""
    return sum(params_by_type(model).values())


def params_by_type(model: onnx.ModelProto) -> dict[str, int]:
    """Parameter counts by storage: ``float`` and, in quantized models, ``int8``/``int16``/``int4``/``int32``."""
    counts: dict[str, int] = {"float": 0}
    packed: dict[str, str] = {}
    int32: set[str] = set()
    for node in model.graph.node:
        port = _INT32_BIAS_PORTS.get(node.op_type)
        if port is not None and port < len(node.input):
            int32.add(node.input[port])
        if node.op_type in _PACKED and len(node.input) > _PACKED[node.op_type][0]:
            bits = next((a.i for a in node.attribute if a.name == _PACKED[node.op_type][1]), 4)
            packed[node.input[_PACKED[node.op_type][0]]] = f"int{bits}"
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node if node.op_type == "Constant" for a in node.attribute
                if a.name == "value"]
    for t in tensors:
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.name in packed:  # bytes of packed codes: 8 // bits codes each
            kind, size = packed[t.name], size * 8 // int(packed[t.name][3:])
        elif t.data_type in _FLOAT_TYPES:
            kind = "float"
        elif t.data_type in _CODE_TYPES:
            kind = _CODE_TYPES[t.data_type]
        elif t.data_type == TensorProto.INT32 and t.name in int32:
            kind = "int32"
        else:
            continue
        counts[kind] = counts.get(kind, 0) + size
    return counts


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
