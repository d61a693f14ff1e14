"""Cost model: multiply-accumulates of the ops that dominate CNNs, and parameter counts."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import light_model, node_label

__all__ = ["count_macs", "count_params", "static_input_shapes"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def static_input_shapes(model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None,
                        default_dim: int = 1) -> dict[str, list[int]]:
    """A concrete shape for every real graph input: symbolic batch dims become 1, other unknowns ``default_dim``."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if overrides and vi.name in overrides:
            shapes[vi.name] = list(overrides[vi.name])
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                           else (1 if k == 0 else default_dim) for k, d in enumerate(dims)]
    return shapes


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


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> tuple[int, dict[str, int]]:
    """Total MACs of Conv, ConvTranspose, Gemm and MatMul for concrete inputs, and MACs per node label."""
    light = light_model(model)
    for vi in light.graph.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    del light.graph.value_info[:]
    try:
        light = onnx.shape_inference.infer_shapes(light, data_prop=True)
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
    per_node: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        macs = _node_macs(node, shapes)
        if macs:
            per_node[node_label(node, i)] = macs
    return sum(per_node.values()), per_node


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    op = node.op_type
    get = lambda k: shapes.get(node.input[k]) if len(node.input) > k else None  # noqa: E731
    out = shapes.get(node.output[0]) if node.output else None
    if op == "Conv":
        w = get(1)
        if w is None or out is None:
            return 0
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        w, x = get(1), get(0)
        if w is None or x is None:
            return 0
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if op in ("Gemm", "MatMul"):
        a, b = get(0), get(1)
        if not a or out is None or b is None:
            return 0
        trans_a = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
        k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
        return int(np.prod(out)) * int(k)
    return 0
