"""The consumers of cut channels, and the weight and bias edits recovery makes to the pruned model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.core.handlers import LinearForm
from onnxprune.core.modelio import tensor_array

__all__ = ["Consumer", "PrunedEdits", "bias_target"]


@dataclass
class Consumer:
    index: int  # node index in the original graph
    node: onnx.NodeProto
    keep_in: np.ndarray
    keep_out: np.ndarray | None
    form: LinearForm


class PrunedEdits:
    """Weight and bias replacements for nodes of the pruned model, found by their (unchanged) output name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.by_output = {n.output[0]: n for n in model.graph.node if n.output}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
        self.taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return tensor_array(self.inits[name])
        if name in self.consts:
            from onnxprune.core.graph import constant_node_value
            return constant_node_value(self.consts[name])
        return None

    def node(self, original: onnx.NodeProto) -> onnx.NodeProto:
        return self.by_output[original.output[0]]

    def set_input(self, node: onnx.NodeProto, port: int, value: np.ndarray, dtype: int) -> None:
        """Point ``node``'s input ``port`` at a new initializer holding ``value`` (never shared)."""
        base = f"{node.name or node.op_type}_recovered_{port}".replace("/", "_")
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        tensor = numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(dtype)), name)
        self.model.graph.initializer.append(tensor)
        self.inits[name] = tensor
        while len(node.input) <= port:
            node.input.append("")
        node.input[port] = name

    def finish(self) -> None:
        """Drop initializers and Constant nodes nothing reads any more."""
        g = self.model.graph
        read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
        kept = [t for t in g.initializer if t.name in read]
        if len(kept) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(kept)
        dead = [k for k, n in enumerate(g.node) if n.op_type == "Constant" and n.output[0] not in read]
        for k in reversed(dead):
            del g.node[k]


def bias_target(c: Consumer, edits: PrunedEdits) -> tuple[onnx.NodeProto, int] | None:
    """The pruned model's node and input port that hold ``c``'s bias: its own, or the Add right after it."""
    if c.form.bias_port is not None:
        return edits.node(c.node), c.form.bias_port
    if c.form.bias_add is not None and c.form.bias_add[0] in edits.by_output:
        return edits.by_output[c.form.bias_add[0]], c.form.bias_add[1]
    return None
