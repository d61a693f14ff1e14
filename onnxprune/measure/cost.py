"""The cost model of a removal: MACs and parameters kept, from per-node MACs and per-constant sizes, evaluated
on kept fractions without rewriting the model."""
from __future__ import annotations

import math

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.measure.macs import count_macs, count_params
from onnxprune.ops import attr

__all__ = ["CostModel"]


class CostModel:
    """MACs and parameters of the model a removal would give, from per-node MACs and per-constant sizes."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, input_shapes: dict[str, list[int]]) -> None:
        self.analysis = analysis
        graph = analysis.graph
        self.total_macs, per_node = count_macs(model, input_shapes)
        self.total_params = count_params(model)
        self.nodes: list[tuple[int, str | None, str | None, bool]] = []  # macs, in, out, output-only
        for i, node in enumerate(graph.nodes):
            macs = per_node.get(graph.label(i), 0)
            if not macs:
                continue
            x, y = node.input[0], node.output[0]
            w = graph.const_shape(node.input[1]) if len(node.input) > 1 else None
            depthwise = node.op_type == "Conv" and int(attr(node, "group", 1)) > 1 and w is not None and w[1] == 1
            self.nodes.append((macs, x if x in analysis.labels else None, y if y in analysis.labels else None,
                               depthwise))
        by_const: dict[str, list[np.ndarray]] = {}
        for ref in analysis.weights:
            by_const.setdefault(ref.name, []).append(ref.atoms)
        self.consts = []
        for name, refs in by_const.items():
            t = graph.const_tensor(name)
            if t is not None and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                 onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
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

        def kept(name: str | None) -> float:
            return 1.0 if name is None else float(np.mean(~gone[labels[name].atoms]))

        macs = sum(m * (kept(y) if dw else kept(x) * kept(y)) for m, x, y, dw in self.nodes)
        lost = 0.0
        for size, refs in self.consts:
            fraction = math.prod(float(np.mean(~gone[a])) for a in refs)
            lost += size * (1.0 - fraction)
        macs_kept = macs / self.total_macs if self.total_macs else 1.0
        params_kept = (self.total_params - lost) / self.total_params if self.total_params else 1.0
        return macs_kept, params_kept
