"""The light copy of a model (big constants as typed inputs) and shape inference on it.

Shape inference runs on the light copy, so it is cheap and works for models far over protobuf's 2 GB limit;
small shape computations (``ConstantOfShape``, ``Where``, ``Equal`` on constants) are folded first so that
Reshape and Expand shapes computed from them are known.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, helper, numpy_helper

__all__ = ["SMALL_CONSTANT", "Dim", "constant_node_value", "copy_fields", "fold_small", "infer_shapes", "light_model"]

Dim = int | str | None
#: Constants with at most this many elements stay in the light model (shape tensors, scalars, axes).
SMALL_CONSTANT = 64

def constant_node_value(node: NodeProto) -> np.ndarray | None:
    """The value a ``Constant`` node produces, in every attribute form it may use."""
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR:
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def light_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large constants are typed graph inputs: cheap to infer, check and serialize."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    src, dst = model.graph, light.graph
    copy_fields(src, dst, skip=("node", "initializer"))
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if _is_small(t):
            dst.initializer.append(t)
        elif t.name not in declared:
            dst.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for node in src.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == AttributeProto.TENSOR \
                and not _is_small(node.attribute[0].t):
            t = node.attribute[0].t
            dst.input.append(helper.make_tensor_value_info(node.output[0], t.data_type, list(t.dims)))
        else:
            dst.node.append(node)
    return light


#: Ops never folded: their results are not fixed by their inputs.
_UNFOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_small(light: onnx.ModelProto, values: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Replace ai.onnx nodes whose inputs are all small constants by Constant nodes holding their (small)
    results, in place: exporters compute Reshape and Expand shapes from such pieces (``ConstantOfShape``,
    ``Where``, ``Equal``), and shape inference then knows the shapes they make. ``values`` receives the folded
    results by tensor name."""
    from onnx.reference import ReferenceEvaluator

    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    opsets = list(light.opset_import)
    for k, node in enumerate(light.graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None and value.size <= 4096:
                known[node.output[0]] = value
            continue
        names = [n for n in node.input if n]
        if (node.domain not in ("", "ai.onnx") or node.op_type in _UNFOLDABLE or not names
                or any(n not in known for n in names) or any(a.type == AttributeProto.GRAPH for a in node.attribute)):
            continue
        try:
            graph = helper.make_graph(
                [node], "fold",
                [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(known[n].dtype), known[n].shape)
                 for n in dict.fromkeys(names)],
                [helper.make_tensor_value_info(o, 0, None) for o in node.output])
            outputs = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, {
                n: known[n] for n in names})
        except Exception:  # noqa: BLE001 - what cannot be folded stays a node
            continue
        results = [np.asarray(v) for v in outputs]
        if len(results) != 1 or results[0].size > 4096 or results[0].dtype == object:
            continue
        known[node.output[0]] = results[0]
        if values is not None:
            values[node.output[0]] = results[0]
        light.graph.node[k].CopyFrom(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                                      value=numpy_helper.from_array(results[0], node.output[0])))
    return light


def _is_small(t: TensorProto) -> bool:
    n = 1
    for d in t.dims:
        n *= d
    return n <= SMALL_CONSTANT or t.data_type in (TensorProto.INT64, TensorProto.INT32) and n <= 4096


Proxy = Callable[[NodeProto, int], "list[NodeProto] | None"]


def with_proxies(light: onnx.ModelProto, proxy: Proxy) -> onnx.ModelProto:
    """``light`` with every node that ``proxy`` gives stand-ins for replaced by them, in place."""
    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes = list(light.graph.node)
    del light.graph.node[:]
    for node in nodes:
        light.graph.node.extend(proxy(node, opset) or [node])
    return light


def infer_shapes(model: onnx.ModelProto, values: dict[str, np.ndarray] | None = None,
                 proxy: Proxy | None = None
                 ) -> tuple[dict[str, tuple[Dim, ...]], dict[str, int]]:
    """Shapes and element types of every tensor onnx's shape inference can reach (symbolic dims as strings);
    ``values`` receives the small tensors computed from constants alone; ``proxy`` gives ai.onnx stand-ins of the
    same output shapes for ops onnx does not know."""
    light = fold_small(light_model(model), values)
    if proxy is not None:
        light = with_proxies(light, proxy)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; missing shapes block what needs them
        inferred = light_model(model)
    shapes: dict[str, tuple[Dim, ...]] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
    return shapes, types


def copy_fields(src, dst, skip: tuple[str, ...]) -> None:
    """Copy every set field of a protobuf message except ``skip`` (skipped fields are never copied)."""
    for desc, value in src.ListFields():
        if desc.name in skip:
            continue
        target = getattr(dst, desc.name)
        if _is_repeated(desc):
            target.extend(value)
        elif desc.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


def _is_repeated(desc) -> bool:
    flag = getattr(desc, "is_repeated", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return desc.label == desc.LABEL_REPEATED


