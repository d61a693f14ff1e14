"""The cost model of a removal: MACs and parameters kept, from per-node MACs and per-constant sizes, evaluated
on kept fractions without rewriting the model."""
from __future__ import annotations

import math

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.handlers import handler_for
from onnxprune.measure.macs import count_macs, count_params

__all__ = ["CostModel"]

#: Element types counted as parameters: floats and quantized codes (as :func:`count_params` counts them).
_PARAM_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


class CostModel:
    """MACs and parameters of the model a removal would give, from per-node MACs and per-constant sizes."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, input_shapes: dict[str, list[int]]) -> None:
        self.analysis = analysis
        graph = analysis.graph
        self.total_macs, per_node = count_macs(model, input_shapes)
        self.total_params = count_params(model)
        self.nodes: list[tuple[int, list[str]]] = []  # macs, the labeled tensors whose kept fraction scales them
        for i, node in enumerate(graph.nodes):
            macs = per_node.get(graph.label(i), 0)
            if not macs:
                continue
            handler = handler_for(node)
            scaling = handler.mac_scaling(node, graph) if handler is not None else ()
            self.nodes.append((macs, [name for name in scaling if name in analysis.labels]))
        by_const: dict[str, list[np.ndarray]] = {}
        for ref in analysis.weights:
            by_const.setdefault(ref.name, []).append(ref.atoms)
        self.consts = []
        for name, refs in by_const.items():
            t = graph.const_tensor(name)
            if t is None and name in graph.derived:  # a weight's DequantizeLinear: its codes
                t = graph.const_tensor(graph.nodes[graph.derived[name]].input[0])
            if t is not None and t.data_type in _PARAM_TYPES:
                self.consts.append((int(np.prod(t.dims)) if len(t.dims) else 1, refs))
        offsets = np.cumsum([0] + [g.size for g in analysis.groups])
        self._flat_index = offsets[analysis.unit_group] + analysis.unit_local if len(analysis.root) else None
        self._offsets = offsets

    def _gone(self, removed: dict[int, np.ndarray]) -> np.ndarray:
        flat = np.zeros(int(self._offsets[-1]), dtype=bool)
        for gid, local in removed.items():
            flat[self._offsets[gid] + local] = True
        return flat[self._flat_index] if self._flat_index is not None else flat

    def fractions(self, removed: dict[int, np.ndarray]) -> tuple[float, float]:
        """(MACs kept, parameters kept) as fractions of the original."""
        gone = self._gone(removed)
        labels = self.analysis.labels

        def kept(name: str) -> float:
            return float(np.mean(~gone[labels[name].atoms]))

        macs = sum(m * math.prod(kept(n) for n in names) for m, names in self.nodes)
        lost = 0.0
        for size, refs in self.consts:
            fraction = math.prod(float(np.mean(~gone[a])) for a in refs)
            lost += size * (1.0 - fraction)
        macs_kept = macs / self.total_macs if self.total_macs else 1.0
        params_kept = (self.total_params - lost) / self.total_params if self.total_params else 1.0
        return macs_kept, params_kept
