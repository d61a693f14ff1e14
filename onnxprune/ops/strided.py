"""``as_strided`` views that are plain copies: the dynamo exporter writes ``AdaptiveAvgPool1d(1)`` (Swin's pooler)
as ``Gather(Reshape(x, [-1]), indices)`` with indices ``arange(B) * C + arange(C)`` computed from the batch size.
Flattening mixes the batch into the channels, so the Reshape alone cannot be followed; where the indices are proven
to list every element of ``x`` in order, the Gather's output is ``x`` itself: its channels pass straight through,
and the rewrite replaces the Gather by ``Identity(x)`` (its index arithmetic holds the old channel count)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import NodeProto, helper

from onnxprune.core.channels import Labeled
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, attr

__all__ = ["follow_identity_gather", "identity_gather"]

_MAX_NODES = 40  # the index computation is a handful of ops
_TRIAL_SIZES = (2, 3)  # values given to every symbolic dim when the indices are evaluated


def follow_identity_gather(ctx: AnalysisContext, node: NodeProto, lx: Labeled) -> bool:
    """Label the output of the Gather that reads ``node``'s flattened output back in order (True), or do
    nothing (False)."""
    users = ctx.graph.consumer_nodes(node.output[0])
    if len(users) != 1 or users[0][1] != 0 or identity_gather(ctx.graph, users[0][0]) != node.input[0]:
        return False
    ctx.set(ctx.graph.nodes[users[0][0]].output[0], lx.axis, lx.atoms)
    return True


def identity_gather(graph: Graph, index: int) -> str | None:
    """``x`` when node ``index`` is ``Gather(Reshape(x, [-1]), indices, axis=0)`` whose indices equal
    ``arange(x.size).reshape(x.shape)`` for several sizes of the symbolic dims, else ``None``."""
    node = graph.nodes[index]
    producer = graph.producer.get(node.input[0])
    flatten = graph.nodes[producer] if producer is not None else None
    if node.op_type != "Gather" or int(attr(node, "axis", 0)) != 0 or flatten is None \
            or flatten.op_type != "Reshape" or graph.rank(node.input[0]) != 1:
        return None
    shape = graph.shape(flatten.input[0])
    if shape is None or any(d is None for d in shape) or graph.rank(node.output[0]) != len(shape):
        return None
    for size in _TRIAL_SIZES:
        dims = tuple(d if isinstance(d, int) else size for d in shape)
        indices = _evaluate(graph, node.input[1], size)
        if indices is None or indices.shape != dims or \
                not np.array_equal(indices.ravel(), np.arange(int(np.prod(dims)))):
            return None
    return flatten.input[0]


def _evaluate(graph: Graph, name: str, size: int) -> np.ndarray | None:
    """The value of ``name`` computed from constants and ``Shape`` reads, every symbolic dim set to ``size``
    (onnx's reference evaluator on the few nodes involved)."""
    nodes: list[NodeProto] = []
    shaped: dict[str, tuple[int, ...]] = {}
    constants: dict[str, np.ndarray] = {}
    pending, seen = [name], set()
    while pending:
        tensor = pending.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        value = graph.value(tensor)
        if value is not None:
            constants[tensor] = np.asarray(value)
            continue
        producer = graph.producer.get(tensor)
        if producer is None or len(nodes) >= _MAX_NODES:
            return None
        node = graph.nodes[producer]
        if node.domain not in ("", "ai.onnx") or any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            return None
        nodes.append(node)
        if node.op_type == "Shape":
            dims = graph.shape(node.input[0])
            if dims is None or any(d is None for d in dims):
                return None
            shaped[node.input[0]] = tuple(d if isinstance(d, int) else size for d in dims)
        else:
            pending.extend(node.input)
    return _run(graph, nodes, shaped, constants, name)


def _run(graph: Graph, nodes: list[NodeProto], shaped: dict[str, tuple[int, ...]], constants: dict[str, np.ndarray],
         name: str) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    order = sorted(nodes, key=lambda n: graph.producer.get(n.output[0], 0))
    inputs = [helper.make_tensor_value_info(t, graph.elem_type(t) or onnx.TensorProto.FLOAT, list(dims))
              for t, dims in shaped.items()]
    inits = [onnx.numpy_helper.from_array(v, t) for t, v in constants.items()]
    output = helper.make_value_info(name, onnx.TypeProto())
    model = helper.make_model(helper.make_graph(order, "indices", inputs, [output], inits),
                              opset_imports=[helper.make_opsetid("", graph.opset())])
    feeds = {t: np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(graph.elem_type(t) or onnx.TensorProto.FLOAT))
             for t, dims in shaped.items()}
    try:
        (value,) = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference evaluator cannot run: the view is not proven
        return None
    return np.asarray(value)
