"""Applying a plan: each handler slices its node's constants and fixes its attributes; then a new model is
assembled that shares nothing mutable with the input. Constants shared by nodes that need different slices are
split into copies; nothing else about the graph changes (node order, names, opsets, metadata)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis.dependency import Analysis
from onnxprune.core import external
from onnxprune.core.channels import Labeled
from onnxprune.core.graph import Graph, copy_fields
from onnxprune.core.graph import subgraph_reads as _subgraph_reads
from onnxprune.core.handlers import handler_for

__all__ = ["Rewriter", "apply_keep"]


class Rewriter:
    """What handlers see while a plan is applied: kept positions, original constants, and edit requests."""

    def __init__(self, analysis: Analysis, keep: dict[str, np.ndarray]) -> None:
        self.graph = analysis.graph
        self._labels = analysis.labels
        self._keep = keep
        self.new_inputs: dict[tuple[int, int], np.ndarray] = {}
        self.added_inputs: dict[int, list[tuple[np.ndarray, str]]] = {}
        self.attrs: dict[int, dict[str, Any]] = {}
        self.removed_attrs: dict[int, set[str]] = {}
        self.replacements: dict[int, tuple[list[onnx.NodeProto], dict[str, np.ndarray]]] = {}
        self.reshaped_tensors: set[str] = set()
        g = self.graph
        self._taken = set(g.producer) | set(g.initializers) | set(g.inputs) | {n.name for n in g.nodes if n.name}
        self._spill = external.spill_folder(g.model)

    # -- what handlers read ----------------------------------------------------------------------------------
    def keep(self, name: str) -> np.ndarray | None:
        """Kept positions along ``name``'s channel axis, or ``None`` if the tensor keeps its extent."""
        return self._keep.get(name)

    def keep_or_all(self, name: str) -> np.ndarray:
        kept = self._keep.get(name)
        if kept is not None:
            return kept
        return np.arange(self._labels[name].size, dtype=np.int64)

    def labeled(self, name: str) -> Labeled | None:
        return self._labels.get(name)

    def label(self, name: str) -> Labeled:
        """The channel axis of a tensor known to carry channels."""
        return self._labels[name]

    def const(self, name: str) -> np.ndarray:
        value = self.graph.const(name)
        if value is None:
            raise KeyError(f"'{name}' is not a constant")
        return value

    # -- what handlers change --------------------------------------------------------------------------------
    def set_input(self, node: int, port: int, value: np.ndarray) -> None:
        """Replace the constant read at ``node``'s input ``port`` by ``value`` (for this use only)."""
        self.new_inputs[(node, port)] = self._held(value)

    def add_input(self, node: int, value: np.ndarray, suffix: str) -> None:
        self.added_inputs.setdefault(node, []).append((self._held(value), suffix))

    def _held(self, value: np.ndarray) -> np.ndarray:
        """``value`` contiguous; spilled to the scratch file (a read-only map) when the model is read in place
        and it is large, so that the rewrite holds a few weights at a time, not all of the new ones."""
        value = np.ascontiguousarray(value)
        if self._spill is not None and value.nbytes >= external.SPILL_MIN_BYTES:
            return external.spill(value, self._spill)
        return value

    def set_attr(self, node: int, name: str, value: Any) -> None:
        self.attrs.setdefault(node, {})[name] = value

    def del_attr(self, node: int, name: str) -> None:
        self.removed_attrs.setdefault(node, set()).add(name)

    def fresh(self, base: str) -> str:
        """A name used by no tensor and no node of the graph (new nodes and tensors are named with it)."""
        k, name = 1, base
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    def uses(self, node: int) -> list[tuple[int, int]]:
        """(reader, port) of every read of ``node``'s first output that was given a new value, sorted."""
        name = self.graph.nodes[node].output[0]
        return sorted(use for use in self.new_inputs if self.graph.nodes[use[0]].input[use[1]] == name)

    def take_input(self, node: int, port: int) -> np.ndarray | None:
        """Withdraw the new value given to ``node``'s input ``port`` (a :meth:`Handler.refold` stores it)."""
        return self.new_inputs.pop((node, port), None)

    def replace_node(self, node: int, nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> None:
        """Put ``nodes`` (reading the new ``constants``) in place of ``node``; they must produce its outputs."""
        self.replacements[node] = (nodes, constants)

    def reshaped(self, names: list[str]) -> None:
        """Tensors outside the plan whose shape the edits change (a shortened repeat): their value infos go."""
        self.reshaped_tensors.update(names)


def apply_keep(analysis: Analysis, keep: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A new model in which every tensor in ``keep`` is cut to its kept positions along its channel axis."""
    rw = Rewriter(analysis, keep)
    graph = analysis.graph
    for i, node in enumerate(graph.nodes):
        if any(n in keep for n in list(node.input) + list(node.output)):
            handler = handler_for(node)
            if handler is not None:
                handler.apply(i, node, rw)
    folds = {graph.derived.get(graph.nodes[i].input[p]) for i, p in rw.new_inputs}
    for j in sorted(j for j in folds if j is not None):  # e.g. a weight's DequantizeLinear cuts its codes
        handler = handler_for(graph.nodes[j])
        if handler is not None:
            handler.refold(j, graph.nodes[j], rw)
    return _assemble(rw, analysis, keep)


def _digest(value: np.ndarray) -> str:
    h = hashlib.sha1(str((value.dtype.str, value.shape)).encode())
    h.update(value.tobytes())
    return h.hexdigest()


@dataclass
class _Constants:
    """Which constant each (node, port) reads after the rewrite, and the constants to write."""

    renamed: dict[tuple[int, int], str] = field(default_factory=dict)
    replaced: dict[str, np.ndarray] = field(default_factory=dict)  # constant name -> new value, same name
    created: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # new name -> (value, data type)
    as_nodes: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # the same, as Constant nodes


def _assemble(rw: Rewriter, analysis: Analysis, keep: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = analysis.graph
    src = graph.model
    consts = _plan_constants(rw, graph)
    out = onnx.ModelProto()
    copy_fields(src, out, skip=("graph",))
    g_out = out.graph
    copy_fields(src.graph, g_out, skip=("node", "initializer", "value_info", "input"))
    _emit_nodes(rw, graph, consts, g_out)
    _drop_dead_folds(g_out, graph)
    _emit_initializers(graph, consts, g_out)
    stale = ({o for j in rw.replacements for o in graph.nodes[j].output} | rw.reshaped_tensors) - set(keep)
    _emit_value_infos(analysis, keep, consts, g_out, stale)
    return out


def _plan_constants(rw: Rewriter, graph: Graph) -> _Constants:
    """Replace a constant in place when every use takes the same new value; else give each distinct new value
    a fresh name (a Constant node where the model keeps its weights in Constant nodes)."""
    c = _Constants()
    by_const: dict[str, list[tuple[int, int]]] = {}
    for (i, port) in rw.new_inputs:
        by_const.setdefault(graph.nodes[i].input[port], []).append((i, port))
    for name, changed_uses in sorted(by_const.items()):
        keys = {use: _digest(rw.new_inputs[use]) if len(changed_uses) > 1 else "" for use in changed_uses}
        all_uses = graph.consumer_nodes(name)
        distinct = set(keys.values())
        if (len(distinct) == 1 and len(changed_uses) == len(all_uses) and name not in graph.outputs
                and graph.is_stored_const(name)):
            c.replaced[name] = rw.new_inputs[changed_uses[0]]
            continue
        names_by_key: dict[str, str] = {}
        for use in sorted(changed_uses):
            key = keys[use]
            if key not in names_by_key:
                names_by_key[key] = rw.fresh(f"{name}_pruned")
                if _from_constant_nodes(graph, name):  # Paddle-style models keep weights in Constant nodes
                    c.as_nodes[names_by_key[key]] = (rw.new_inputs[use], graph.elem_type(name))
                else:
                    c.created[names_by_key[key]] = (rw.new_inputs[use], graph.elem_type(name))
            c.renamed[use] = names_by_key[key]
    return c


def _emit_nodes(rw: Rewriter, graph: Graph, c: _Constants, g_out: onnx.GraphProto) -> None:
    """Copy every node in order with its edits (inputs renamed, attributes, replacements)."""
    for i, node in enumerate(graph.nodes):
        if i in rw.replacements:
            nodes, constants = rw.replacements[i]
            g_out.node.extend(nodes)
            c.created.update({name: (value, 0) for name, value in constants.items()})
            continue
        changes = (i in rw.attrs or i in rw.removed_attrs or i in rw.added_inputs
                   or any((i, p) in c.renamed for p in range(len(node.input)))
                   or (node.op_type == "Constant" and node.output and node.output[0] in c.replaced))
        for p in range(len(node.input)):
            reads = c.renamed.get((i, p))
            if reads is not None and reads in c.as_nodes:  # emitted right before its first reader
                value, dtype = c.as_nodes.pop(reads)
                g_out.node.append(helper.make_node("Constant", [], [reads], name=reads,
                                                   value=_tensor(value, reads, dtype, in_node=True)))
        new = g_out.node.add()
        new.CopyFrom(node)
        if changes:
            _edit_node(rw, graph, c, i, node, new)


def _edit_node(rw: Rewriter, graph: Graph, c: _Constants, i: int, node: onnx.NodeProto,
               new: onnx.NodeProto) -> None:
    for p in range(len(node.input)):
        if (i, p) in c.renamed:
            new.input[p] = c.renamed[(i, p)]
    for value, suffix in rw.added_inputs.get(i, []):
        extra = rw.fresh(f"{node.name or node.op_type}_{suffix}")
        c.created[extra] = (value, 0)
        new.input.append(extra)
    drop = rw.removed_attrs.get(i, set()) | set(rw.attrs.get(i, {}))
    kept_attrs = [a for a in new.attribute if a.name not in drop]
    del new.attribute[:]
    new.attribute.extend(kept_attrs)
    for key, value in sorted(rw.attrs.get(i, {}).items()):
        new.attribute.append(helper.make_attribute(key, value))
    if node.op_type == "Constant" and node.output[0] in c.replaced:
        del new.attribute[:]
        new.attribute.append(helper.make_attribute(
            "value", _tensor(c.replaced[node.output[0]], node.output[0], graph.elem_type(node.output[0]),
                             in_node=True)))


def _emit_initializers(graph: Graph, c: _Constants, g_out: onnx.GraphProto) -> None:
    """The initializers still read, replaced ones with their new values, then the new ones by name."""
    used = {n for node in g_out.node for n in node.input} | set(graph.outputs) | _subgraph_reads(g_out)
    for t in graph.model.graph.initializer:
        if t.name not in used:
            continue
        if t.name in c.replaced:
            g_out.initializer.append(_tensor(c.replaced[t.name], t.name, t.data_type))
        else:
            g_out.initializer.append(t)
    for name in sorted(c.created):
        value, dtype = c.created[name]
        g_out.initializer.append(_tensor(value, name, dtype))


def _emit_value_infos(analysis: Analysis, keep: dict[str, np.ndarray], c: _Constants,
                      g_out: onnx.GraphProto, stale: set[str]) -> None:
    """Graph inputs (old IR versions list initializers too) and value infos, with the new extents; ``stale``
    outputs (of replaced nodes, outside the plan: an Expand of a cut class token) lose theirs."""
    graph = analysis.graph
    src = graph.model
    used = {n for node in g_out.node for n in node.input} | set(graph.outputs) | _subgraph_reads(g_out)
    init_shapes = {t.name: list(t.dims) for t in g_out.initializer}
    for vi in src.graph.input:
        if vi.name in graph.initializers and vi.name not in used:
            continue
        new_vi = g_out.input.add()
        new_vi.CopyFrom(vi)
        if vi.name in c.replaced:
            _set_dims(new_vi, init_shapes[vi.name])
    if len(g_out.input) and any(vi.name in graph.initializers for vi in src.graph.input):
        for name in sorted(c.created):  # old IR versions list every initializer as an input
            g_out.input.append(helper.make_tensor_value_info(name, _dtype_of(g_out, name), init_shapes[name]))
    dropped = set(graph.initializers) - {t.name for t in g_out.initializer}
    for vi in src.graph.value_info:
        if vi.name in dropped or vi.name in stale:
            continue
        new_vi = g_out.value_info.add()
        new_vi.CopyFrom(vi)
        if vi.name in c.replaced:
            _set_dims(new_vi, list(c.replaced[vi.name].shape))
        if vi.name in keep and new_vi.type.tensor_type.HasField("shape"):
            dims = new_vi.type.tensor_type.shape.dim
            axis = analysis.labels[vi.name].axis
            if axis < len(dims):
                dims[axis].Clear()
                dims[axis].dim_value = len(keep[vi.name])


def _from_constant_nodes(graph, name: str) -> bool:
    """True when ``name`` is a Constant node's output or computed (Reshape, Identity, ...) from such outputs."""
    if name in graph.constant_nodes:
        return True
    if name in graph.derived:
        node = graph.nodes[graph.derived[name]]
        return all(_from_constant_nodes(graph, n) for n in node.input if n)
    return False


def _drop_dead_folds(g: onnx.GraphProto, graph) -> None:
    """Remove ops whose result nothing reads any more: ops on constants (Identity, Reshape, ...) whose result the
    rewrite replaced by a new constant, and ops that only fed a replaced node (an index computation that held the
    old channel count). Ops the original graph left unread stay as they were."""
    was_read = {n for node in graph.nodes for n in node.input} | set(graph.outputs) | _subgraph_reads(graph.model.graph)
    while True:
        read = {n for node in g.node for n in node.input} | set(graph.outputs) | _subgraph_reads(g)
        dead = [k for k, node in enumerate(g.node) if node.output and not any(o in read for o in node.output)
                and ((len(node.output) == 1 and (node.output[0] in graph.derived
                                                 or node.output[0] in graph.constant_nodes))
                     or any(o in was_read for o in node.output))]
        if not dead:
            return
        for k in reversed(dead):
            del g.node[k]


def _tensor(value: np.ndarray, name: str, data_type: int, in_node: bool = False) -> TensorProto:
    spilled = None if in_node else external.spilled_tensor(value, name, data_type)
    if spilled is not None:  # an initializer spilled by the rewrite stays in the scratch file, read in place
        return spilled
    t = numpy_helper.from_array(value, name)
    if data_type and t.data_type != data_type:
        t = helper.make_tensor(name, data_type, value.shape, value.tobytes(), raw=True)
    return t


def _dtype_of(g: onnx.GraphProto, name: str) -> int:
    return next(t.data_type for t in g.initializer if t.name == name)


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = d
