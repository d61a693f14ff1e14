"""Model statistics (parameters, MACs, bytes) and one row per channel group, for reports and ``inspect``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import light_model
from onnxprune.core.modelio import _data_bytes
from onnxprune.measure.macs import count_macs, params_by_type

__all__ = ["ModelStats", "model_stats", "group_rows"]


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    bytes: int
    macs_per_node: dict[str, int]
    params_by_type: dict[str, int] = field(default_factory=dict)  # float / int8 / int4 / int32 (quantized models)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params, "macs": self.macs, "bytes": self.bytes}
        if set(self.params_by_type) - {"float"}:
            out["params_by_type"] = dict(self.params_by_type)
        return out


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> ModelStats:
    macs, per_node = count_macs(model, input_shapes)
    size = _data_bytes(model) + light_model(model).ByteSize()  # ByteSize() of the whole model serializes it
    by_type = params_by_type(model)
    return ModelStats(sum(by_type.values()), macs, size, per_node, by_type)


def group_rows(analysis: Analysis, removed: dict[int, np.ndarray], macs_per_node: dict[str, int]
               ) -> list[dict[str, Any]]:
    """One row per group: size (in units: heads for a head group), kept, blocked reason, kind, creating nodes, the
    nodes whose weights it touches and their MACs."""
    graph = analysis.graph
    params: dict[int, int] = {}
    for ref in analysis.weights:
        value = graph.const_tensor(ref.name)
        if value is None and ref.name in graph.derived:  # a weight's DequantizeLinear: its codes
            value = graph.const_tensor(graph.nodes[graph.derived[ref.name]].input[0])
        per_row = int(np.prod(value.dims)) // max(len(ref.atoms), 1) if value is not None else 0
        gids, counts = np.unique(analysis.unit_group[ref.atoms], return_counts=True)
        for gid, n in zip(gids, counts):
            params[int(gid)] = params.get(int(gid), 0) + per_row * int(n)
    rows = []
    for g in analysis.groups:
        lost = len(removed.get(g.id, ()))
        rows.append({
            "id": g.id,
            "size": g.size,
            "kept": g.size - lost,
            "blocked": g.blocked,
            "kind": g.kind,
            "sources": g.sources,
            "touches": [graph.label(n) for n in g.nodes],  # every node whose weights follow the group
            "macs": sum(macs_per_node.get(graph.label(n), 0) for n in g.nodes),
            "params": params.get(g.id, 0),
        })
    return rows
