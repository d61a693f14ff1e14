"""The torch bridge: an ONNX graph as a ``torch.nn.Module`` whose parameters are the graph's float weights.

Every float initializer (and every large float ``Constant`` node, as Paddle exports them) read in a weight
position becomes a named parameter; BatchNorm running statistics become buffers; everything else (shapes,
scalars, integer tensors) stays a fixed buffer. ``forward`` interprets the nodes in graph order with torch
functions, so the module trains like any torch model; :func:`write_back` puts the trained values into the same
initializers and Constant nodes, giving a model with the identical graph — nodes, names, inputs, outputs.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import onnx
import torch
from onnx import AttributeProto, helper, numpy_helper

from onnxprune.core.graph import copy_fields
from onnxprune.core.modelio import tensor_array
from onnxprune.errors import UnsupportedError
from onnxprune.training.bridge import (  # noqa: F401 - they register the operators
    contrib_ops,
    math_ops,
    nn_ops,
    shape_ops,
)
from onnxprune.training.bridge.registry import OPS, OpContext, op_key

__all__ = ["OnnxModule", "write_back", "unsupported_ops"]

#: Inputs that hold settings rather than weights, per op type: never trained.
_SETTING_INPUTS = {"Resize": {1, 2, 3}, "Upsample": {1}, "Clip": {1, 2}, "Pad": {1, 2, 3}, "Pow": {1},
                   "Slice": {1, 2, 3, 4}, "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Split": {1},
                   "Squeeze": {1}, "Unsqueeze": {1}, "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1},
                   "ReduceMin": {1}, "Gather": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}}
_RUNNING_STATS = {"BatchNormalization": (3, 4)}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` the bridge cannot run (sorted, each once)."""
    missing = set()
    for n in model.graph.node:
        key = op_key(n.domain, n.op_type)
        if key not in OPS and key != "Constant":
            missing.add(key)
    return sorted(missing)


class OnnxModule(torch.nn.Module):
    """Runs ``model`` with torch; ``parameters()`` are its float weights, named after their tensors.

    ``module.weight("conv1.weight")`` returns the parameter of an ONNX tensor; ``forward(*inputs)`` takes the
    graph inputs in order (or ``forward(**feeds)`` by name) and returns the graph outputs as a tuple.
    ``capture`` names intermediate tensors to keep (see :meth:`run`). ``train_bn`` makes BatchNormalization use
    batch statistics and update its running statistics in training mode.
    """

    def __init__(self, model: onnx.ModelProto, train_bn: bool = True) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise UnsupportedError(f"the torch bridge does not support these ops: {', '.join(missing)}")
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.ctx = OpContext(opset)
        self.train_bn = train_bn
        self.input_names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        self.output_names = [o.name for o in graph.output]
        self._keys: dict[str, str] = {}  # ONNX tensor name -> attribute name on this module
        self._trainable = _weight_positions(graph)
        values = {t.name: tensor_array(t) for t in graph.initializer}  # mapped views for a model read in place
        self._nodes: list[tuple[str, dict, list[str], list[str]]] = []
        for node in graph.node:
            if node.op_type == "Constant":
                values[node.output[0]] = _constant_value(node)
                continue
            attrs = {a.name: _attribute(a) for a in node.attribute}
            self._nodes.append((op_key(node.domain, node.op_type), attrs, list(node.input), list(node.output)))
        used = {name for _, _, inputs, _ in self._nodes for name in inputs} | set(self.output_names)
        for name, array in values.items():
            if name in used:
                self._register(name, array)
        self._last_use = _last_uses(self._nodes, self.output_names)

    def _register(self, name: str, array: np.ndarray) -> None:
        key = re.sub(r"\W", "_", name)
        while key in self._keys.values() or hasattr(self, key) or not key or key[0].isdigit():
            key = "t_" + key
        self._keys[name] = key
        tensor = torch.from_numpy(np.array(array, copy=True))
        kind = self._trainable.get(name)
        if kind == "param" and tensor.is_floating_point() and tensor.numel() > 1:
            self.register_parameter(key, torch.nn.Parameter(tensor))
        else:
            self.register_buffer(key, tensor, persistent=kind == "stat" and tensor.is_floating_point())

    def weight(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding the ONNX tensor ``name``."""
        return getattr(self, self._keys[name])

    def has_param(self, name: str) -> bool:
        """Whether the ONNX tensor ``name`` is a trainable parameter of this module."""
        return name in self._keys and isinstance(getattr(self, self._keys[name]), torch.nn.Parameter)

    def named_weights(self) -> Iterable[tuple[str, torch.nn.Parameter]]:
        """(ONNX tensor name, parameter) of every trainable weight."""
        for name, key in self._keys.items():
            value = getattr(self, key)
            if isinstance(value, torch.nn.Parameter):
                yield name, value

    def tensors(self) -> dict[str, torch.Tensor]:
        """ONNX tensor name -> current value (parameters and updated running statistics) for write-back."""
        return {name: getattr(self, key) for name, key in self._keys.items()
                if isinstance(getattr(self, key), torch.nn.Parameter) or self._trainable.get(name) == "stat"}

    def forward(self, *inputs: torch.Tensor, **feeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        named.update(feeds)
        outputs, _ = self.run(named)
        return outputs

    def run(self, feeds: dict[str, torch.Tensor], capture: Iterable[str] = ()
            ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """Graph outputs, and the captured intermediate tensors by name."""
        keep = set(capture)
        env: dict[str, torch.Tensor] = {}
        for name, key in self._keys.items():
            env[name] = getattr(self, key)
        for name in self.input_names:
            if name not in feeds:
                raise ValueError(f"missing input '{name}'")
            value = feeds[name]
            env[name] = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        self.ctx.train_bn = self.train_bn and self.training
        captured: dict[str, torch.Tensor] = {}
        for k, (op_type, attrs, inputs, outputs) in enumerate(self._nodes):
            self.ctx.n_outputs = len(outputs)
            args = [env[i] if i else None for i in inputs]
            results = OPS[op_type](self.ctx, attrs, args)
            for name, value in zip(outputs, results):
                if name:
                    env[name] = value
                    if name in keep:
                        captured[name] = value
            for name in self._last_use.get(k, ()):
                if name not in self._keys:
                    env.pop(name, None)
        return tuple(env[name] for name in self.output_names), captured


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers and Constant nodes hold the module's trained values.

    Nothing else changes: the graph, its node order, names, inputs and outputs are those of ``model``; each
    tensor keeps its data type.
    """
    updated = {name: value.detach().cpu().numpy() for name, value in module.tensors().items()}
    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(model.graph, out.graph, skip=("node", "initializer"))
    for t in model.graph.initializer:
        if t.name in updated:
            out.graph.initializer.append(_tensor(updated[t.name], t.name, t.data_type))
        else:
            out.graph.initializer.append(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in updated and node.attribute[0].type == \
                AttributeProto.TENSOR:
            new = out.graph.node.add()
            copy_fields(node, new, skip=("attribute",))
            attr = new.attribute.add()
            copy_fields(node.attribute[0], attr, skip=("t",))
            attr.t.CopyFrom(_tensor(updated[node.output[0]], node.attribute[0].t.name, node.attribute[0].t.data_type))
        else:
            out.graph.node.append(node)
    return out


def _tensor(value: np.ndarray, name: str, data_type: int) -> onnx.TensorProto:
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    return numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype, copy=False)), name)


def _weight_positions(graph: onnx.GraphProto) -> dict[str, str]:
    """'param' for tensors read in a weight position, 'stat' for running statistics, 'fixed' for settings."""
    kinds: dict[str, str] = {}
    for node in graph.node:
        settings = _SETTING_INPUTS.get(node.op_type, set())
        stats = _RUNNING_STATS.get(node.op_type, ())
        for k, name in enumerate(node.input):
            if not name:
                continue
            if k in stats:
                kinds[name] = "stat"
            elif k in settings:
                kinds.setdefault(name, "fixed")
            elif kinds.get(name) != "stat":
                kinds[name] = "param"
    for node in reversed(graph.node):  # running statistics passed through Identity (legacy exports)
        if node.op_type == "Identity" and kinds.get(node.output[0]) == "stat":
            kinds[node.input[0]] = "stat"
    return kinds


def _last_uses(nodes: list, outputs: list[str]) -> dict[int, list[str]]:
    """Node index -> tensors no later node reads (freed after it runs)."""
    last: dict[str, int] = {}
    for k, (_, _, inputs, _) in enumerate(nodes):
        for name in inputs:
            if name:
                last[name] = k
    for name in outputs:
        last.pop(name, None)
    by_node: dict[int, list[str]] = {}
    for name, k in last.items():
        by_node.setdefault(k, []).append(name)
    return by_node


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    if attr.name in ("value_float", "value_floats"):
        return np.asarray(value, dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.asarray(value, dtype=np.int64)
    raise UnsupportedError(f"Constant node '{node.name}' with attribute '{attr.name}' is not supported")


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise UnsupportedError("the torch bridge does not run subgraphs (If/Loop/Scan)")
    if isinstance(value, bytes):
        return value.decode()
    return value
