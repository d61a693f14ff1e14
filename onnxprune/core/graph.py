"""A thin read-only façade over an ``onnx.ModelProto``: producers, consumers, constants and inferred shapes.

onnxprune works on the protobuf directly instead of converting the model to onnx-graphsurgeon's IR: that
conversion copies every initializer, and the rewriter only needs to replace the few tensors it slices. Shape
inference runs on a *light* copy of the graph whose large initializers are replaced by typed graph inputs, so it
is cheap and works for models far over protobuf's 2 GB limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, helper

from onnxprune.core.handlers import handler_for
from onnxprune.core.inference import (
    SMALL_CONSTANT,
    Dim,
    constant_node_value,
    copy_fields,
    infer_shapes,
    light_model,
    with_proxies,
)
from onnxprune.core.modelio import tensor_array
from onnxprune.errors import ModelError, UsageError

__all__ = ["Graph", "Dim", "light_model", "node_label", "copy_fields", "static_input_shapes", "SMALL_CONSTANT"]

#: Size given to unknown non-batch input dims for test runs and MAC counts (``--input-shape`` overrides).
DEFAULT_DIM = 64
#: Constants up to this size stay cached after the first read.
CACHE_LIMIT = 1 << 20


def _foldable(node: NodeProto) -> bool:
    handler = handler_for(node)
    return handler is not None and handler.foldable(node)


def _proxy(node: NodeProto, opset: int) -> list[NodeProto] | None:
    handler = handler_for(node)
    return handler.shape_proxy(node, opset) if handler is not None else None


def node_label(node: NodeProto, index: int) -> str:
    """A readable, unique name for a node: its name, or ``<op>#<index>`` when it has none."""
    return node.name or f"{node.op_type}#{index}"


@dataclass
class Graph:
    """Indexes of one model's main graph. Build with :meth:`Graph.build`; never mutates the model."""

    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    constant_nodes: dict[str, int] = field(default_factory=dict)
    derived: dict[str, int] = field(default_factory=dict)  # output of a foldable op on constants -> node
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)
    folded: dict[str, np.ndarray] = field(default_factory=dict)  # small tensors computed from constants alone
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto, infer: bool = True) -> "Graph":
        g = cls(model)
        graph = model.graph
        g.initializers = {t.name: t for t in graph.initializer}
        g.inputs = [vi.name for vi in graph.input if vi.name not in g.initializers]
        g.outputs = [vi.name for vi in graph.output]
        for i, node in enumerate(graph.node):
            for port, name in enumerate(node.input):
                if name:
                    g.consumers.setdefault(name, []).append((i, port))
            for name in _subgraph_free_inputs(node):
                g.consumers.setdefault(name, []).append((i, -1))
            for name in node.output:
                if name:
                    if name in g.producer or name in g.initializers:
                        raise ModelError(f"tensor '{name}' is produced twice (node {node_label(node, i)})")
                    g.producer[name] = i
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                g.constant_nodes[node.output[0]] = i
            elif (len(node.output) == 1 and _foldable(node)
                  and all(g.is_const(n) for n in node.input if n)):
                g.derived[node.output[0]] = i  # exporters share weights via Identity, Paddle reshapes biases
        g._check_references()
        check_input(model)
        if infer:
            g.shapes, g.elem_types = infer_shapes(model, g.folded, _proxy)
        return g

    def _check_references(self) -> None:
        known = set(self.producer) | set(self.initializers) | set(self.inputs) | {""}
        for name, uses in self.consumers.items():
            if name not in known:
                i, _ = uses[0]
                node = self.model.graph.node[i]
                raise ModelError(
                    f"node {node_label(node, i)} ({node.op_type}) reads tensor '{name}', which nothing produces"
                )
        for name in self.outputs:
            if name not in known:
                raise ModelError(f"graph output '{name}' is not produced by any node")

    # -- nodes ---------------------------------------------------------------------------------------------
    @property
    def nodes(self):
        return self.model.graph.node

    def label(self, index: int) -> str:
        return node_label(self.nodes[index], index)

    def consumer_nodes(self, name: str) -> list[tuple[int, int]]:
        return self.consumers.get(name, [])

    def opset(self, domain: str = "") -> int:
        for op in self.model.opset_import:
            if op.domain == domain or (domain == "" and op.domain == "ai.onnx"):
                return op.version
        return 0

    # -- constants -----------------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes or name in self.derived

    def is_stored_const(self, name: str) -> bool:
        """A constant stored under this very name (not an Identity alias of one)."""
        return name in self.initializers or name in self.constant_nodes

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer, a ``Constant`` node or a foldable op on constants, else ``None``."""
        if name in self._arrays:
            return self._arrays[name]
        value: np.ndarray | None = None
        if name in self.initializers:
            value = tensor_array(self.initializers[name])  # mapped, not copied, for a model read in place
        elif name in self.constant_nodes:
            value = constant_node_value(self.nodes[self.constant_nodes[name]])
        elif name in self.derived:
            value = self._fold(self.derived[name])
        if value is not None and value.nbytes <= CACHE_LIMIT:
            self._arrays[name] = value  # big weights are read again when needed instead of held twice
        return value

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or a small tensor's that the graph computes from constants alone (shape
        arithmetic folded for shape inference); ``None`` otherwise. Never a weight to cut."""
        value = self.const(name)
        return value if value is not None else self.folded.get(name)

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of a constant without reading its data (``None`` if ``name`` is not a constant)."""
        if not self.is_const(name):
            return None
        t = self.const_tensor(name)
        if t is not None and (name in self.initializers or name in self.constant_nodes or name in self.derived
                              and self.nodes[self.derived[name]].op_type == "Identity"):
            return tuple(int(d) for d in t.dims)
        shape = self.static_shape(name)
        if shape is not None:
            return shape
        value = self.const(name)
        return None if value is None else tuple(value.shape)

    def const_tensor(self, name: str) -> TensorProto | None:
        """The TensorProto holding a constant (initializer or Constant ``value``), if it has one."""
        while name in self.derived and self.nodes[self.derived[name]].op_type == "Identity":
            name = self.nodes[self.derived[name]].input[0]
        if name in self.initializers:
            return self.initializers[name]
        if name in self.constant_nodes:
            for a in self.nodes[self.constant_nodes[name]].attribute:
                if a.name == "value" and a.type == AttributeProto.TENSOR:
                    return a.t
        return None

    def _fold(self, index: int) -> np.ndarray | None:
        node = self.nodes[index]
        inputs = [self.const(n) if n else None for n in node.input]
        if node.op_type == "Identity":
            return inputs[0]
        handler = handler_for(node)
        value = handler.evaluate(node, inputs) if handler is not None else None
        if value is not None:
            return value
        known = {n: v for n, v in zip(node.input, inputs) if n and v is not None}
        if len(known) != sum(1 for n in node.input if n):
            return None
        try:
            from onnx.reference import ReferenceEvaluator

            graph = helper.make_graph(
                [node], "fold",
                [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                 for n, v in known.items()],
                [helper.make_tensor_value_info(node.output[0], 0, None)])
            model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
            outputs: list[Any] = list(ReferenceEvaluator(model).run(None, known))
            return np.asarray(outputs[0])
        except Exception:  # noqa: BLE001 - an op we cannot fold is simply not a constant to us
            return None

    # -- shapes --------------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        if name in self.shapes:
            return self.shapes[name]
        t = self.const_tensor(name)
        if t is not None:
            return tuple(int(d) for d in t.dims)
        value = self.const(name)
        return None if value is None else tuple(value.shape)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        if s is not None:
            return len(s)
        producer = self.producer.get(name)
        if producer is None:
            return None
        node = self.nodes[producer]
        handler = handler_for(node)  # inference gave up: the op's handler knows its output rank
        return handler.output_rank(node, self.rank) if handler is not None else None

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shape(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(int(d) for d in s)  # type: ignore[arg-type]

    def elem_type(self, name: str) -> int:
        if name in self.elem_types:
            return self.elem_types[name]
        t = self.const_tensor(name)
        return t.data_type if t is not None else 0


def _subgraph_free_inputs(node: NodeProto) -> Iterator[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            local = {t.name for t in sub.initializer} | {vi.name for vi in sub.input}
            for n in sub.node:
                local.update(n.output)
            for n in sub.node:
                for name in n.input:
                    if name and name not in local:
                        yield name
                yield from (x for x in _subgraph_free_inputs(n) if x not in local)


def static_input_shapes(model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None,
                        default_dim: int = DEFAULT_DIM) -> dict[str, list[int]]:
    """A concrete shape for every real graph input: symbolic batch dims become 1, other unknowns ``default_dim``.
    ``overrides`` (``--input-shape``) must name real inputs, match their rank and keep the dims the model pins."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in vi.type.tensor_type.shape.dim]
        if overrides and vi.name in overrides:
            shapes[vi.name] = _checked_override(vi.name, dims, list(overrides[vi.name]))
            continue
        shapes[vi.name] = [d if d is not None else (1 if k == 0 else default_dim) for k, d in enumerate(dims)]
    unknown = sorted(set(overrides or ()) - set(shapes))
    if unknown:
        raise UsageError(f"--input-shape names no input of the model: '{unknown[0]}' (inputs: "
                         f"{', '.join(shapes) or 'none'})")
    return shapes


def _checked_override(name: str, pinned: list[int | None], dims: list[int]) -> list[int]:
    """``dims`` for input ``name`` when they fit its rank and the dims the model pins (``None``: free)."""
    given = f"--input-shape {name}:{'x'.join(str(d) for d in dims)}"
    if len(dims) != len(pinned):
        raise UsageError(f"{given}: input '{name}' has rank {len(pinned)}, not {len(dims)}")
    for k, (want, got) in enumerate(zip(pinned, dims)):
        if got < 1:
            raise UsageError(f"{given}: dimensions must be positive")
        if want is not None and got != want:
            what = "the batch (dimension 0)" if k == 0 else f"dimension {k}"
            raise UsageError(f"{given}: the model pins {what} of '{name}' to {want}")
    return dims


def checker_view(model: onnx.ModelProto, light: bool = True) -> onnx.ModelProto:
    """What onnx's checker is run on: ``model`` (its light copy, structure without weight bytes, with ``light``);
    where it holds nodes of the default domain that onnx does not define but onnxruntime does
    (``SimplifiedLayerNormalization``, which onnxruntime's transformer optimizer writes there), a light copy with
    those nodes replaced by their handler's ai.onnx stand-ins of the same output shapes, so the rest of the graph
    is checked in full; onnxruntime, which runs the real op, checks those nodes."""
    def stand_in(node: NodeProto, opset: int) -> list[NodeProto] | None:
        return _proxy(node, opset) if _foreign(node) else None

    if any(_foreign(n) for n in model.graph.node):
        return with_proxies(light_model(model), stand_in)
    return light_model(model) if light else model


def _foreign(node: NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)


def check_input(model: onnx.ModelProto) -> None:
    """Reject an input model onnx's checker calls invalid."""
    try:
        onnx.checker.check_model(checker_view(model, light=True))
    except onnx.checker.ValidationError as exc:
        lines = str(exc).strip().splitlines()
        raise ModelError(f"the input model is not valid ONNX: {lines[0] if lines else exc}") from exc


def subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Every tensor name read by the nodes of ``g``'s subgraphs (If/Loop/Scan bodies), recursively."""
    names: set[str] = set()
    for node in g.node:
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                names.update(n for sn in sub.node for n in sn.input)
                names |= subgraph_reads(sub)
    return names
