"""``--round-to auto``: per channel group, the kept-count multiple the runtime rewards.

For every prunable group, a micro-benchmark in onnxruntime times the group's Conv/ConvTranspose/Gemm/MatMul
nodes (real input shapes, random weights) at a few kept widths ``n`` -- near a quarter, half and three
quarters of the group, off every candidate multiple by different residues -- and at ``n`` rounded up to each
candidate multiple, the way the planner rounds. The nodes are chained as in the model where only
shape-preserving ops (BatchNorm, activations, residual Adds) lie between them, so that the runtime's layout
choices along the chain are timed too; the ops in between are left out. The chosen multiple is the largest
whose rounded widths run, on average relative to ``n`` itself, within ``tolerance`` of the fastest candidate
and no slower than ``n``: a group is rounded only where that measured no slower than not rounding, and then
keeps as many channels as cost nothing. (onnxruntime's CPU provider, for one, runs a convolution in its
blocked NCHWc layout only when its channel counts fit the block.)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.dependency import Analysis, PruneGroup
from onnxprune.analysis.dependency import analyze as find_groups
from onnxprune.core.graph import Graph, static_input_shapes
from onnxprune.core.handlers import BenchLink, BenchSpec, handler_for
from onnxprune.core.progress import Progress
from onnxprune.measure.macs import concrete_shapes
from onnxprune.measure.runtime import CPU, Session, provider_list
from onnxprune.planning.planner import PlanConfig, choose
from onnxprune.tuning.latency import median_times, repeats_for

__all__ = ["CANDIDATES", "Rounding", "auto_round_to"]

#: The multiples tried per group.
CANDIDATES = (1, 4, 8, 16)
#: Kept fractions of a group at which rounding is measured.
BASES = (0.25, 0.5, 0.75)


@dataclass
class Rounding:
    """The chosen multiple per group id and, per measured group, the mean time ratio of each candidate
    (time at the rounded widths / time at the unrounded ones: below 1 means rounding is faster)."""

    multiples: dict[int, int]
    ratios: dict[int, dict[int, float]] = field(default_factory=dict)
    provider: str = CPU
    threads: int = 1

    def to_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads,
                "groups": [{"id": gid, "multiple": m,
                            "ratios": {str(k): v for k, v in self.ratios.get(gid, {}).items()}}
                           for gid, m in sorted(self.multiples.items())]}


def auto_round_to(model: onnx.ModelProto, analysis: Analysis | None = None, *,
                  candidates: Sequence[int] = CANDIDATES, provider: str = CPU, threads: int = 1, rounds: int = 7,
                  warmup: int = 2, tolerance: float = 0.03, input_shapes: dict[str, list[int]] | None = None
                  ) -> Rounding:
    """Measure the kept-count multiple each prunable group of ``model`` should be rounded to (see the module
    docstring). Groups without a Conv/Gemm/MatMul, or too small for any candidate above 1, get 1."""
    analysis = analysis if analysis is not None else find_groups(Graph.build(model))
    shapes = concrete_shapes(model, static_input_shapes(model, input_shapes))
    scores = {g.id: np.zeros(g.size) for g in analysis.groups}
    result = Rounding({}, provider=provider, threads=threads)
    prunable = [g for g in analysis.groups if g.prunable]
    with Progress("measuring channel rounding", len(prunable)) as bar:
        for g in prunable:
            result.multiples[g.id] = 1
            options = sorted({1, *(m for m in candidates if 1 < m < g.size)})
            heavy = [i for i in g.nodes if _measurable(analysis.graph, i, shapes)]
            if len(options) > 1 and heavy:
                ratios = _measure(model, analysis, g, heavy, shapes, scores, options, provider, threads, rounds,
                                  warmup)
                limit = min(min(ratios.values()) + tolerance, 1.0)
                result.multiples[g.id] = max(m for m in options if ratios[m] <= limit)
                result.ratios[g.id] = ratios
            bar.advance()
    return result


def _measure(model: onnx.ModelProto, analysis: Analysis, g: PruneGroup, heavy: list[int],
             shapes: dict[str, list[int]], scores: dict[int, np.ndarray], options: list[int], provider: str,
             threads: int, rounds: int, warmup: int) -> dict[int, float]:
    """Mean over the base widths of time(rounded up to m) / time(unrounded), per candidate m."""
    top = max(options)  # base widths off every candidate multiple, with residues spread over [1, top)
    bases = sorted({min(top * math.floor(f * g.size / top) + 1 + (i * top) // len(BASES), g.size - 1)
                    for i, f in enumerate(BASES)})
    width: dict[tuple[int, int], int] = {}
    removals: dict[int, np.ndarray] = {}
    for n in bases:
        for m in options:
            gone = choose(analysis, scores, PlanConfig(ratio=0.0, round_to_map={g.id: m}), {g.id: n}).get(g.id)
            gone = gone if gone is not None else np.zeros(0, dtype=np.int64)
            width[n, m] = g.size - len(gone)
            removals.setdefault(width[n, m], gone)
    sessions, feeds = {}, {}
    for w, gone in removals.items():
        mini, feeds[w] = _mini_model(model, analysis, heavy, shapes, analysis.keep_positions({g.id: gone}))
        sessions[w] = Session(mini, threads=threads, providers=provider_list(provider))
    order = sorted(sessions)
    runs = [(lambda w=w: sessions[w].run(feeds[w])) for w in order]
    repeat = repeats_for(runs[0])
    seconds = dict(zip(order, median_times(runs, rounds, warmup, repeat)))
    return {m: float(np.mean([seconds[width[n, m]] / seconds[width[n, 1]] for n in bases])) for m in options}


def _measurable(graph: Graph, i: int, shapes: dict[str, list[int]]) -> bool:
    node = graph.nodes[i]
    if len(node.input) < 2 or graph.const_shape(node.input[1]) is None:
        return False
    if node.input[0] not in shapes or node.output[0] not in shapes:
        return False
    if graph.elem_type(node.input[0]) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return False
    return _bench(graph, node, shapes[node.input[0]], shapes[node.output[0]], shapes[node.input[0]]) is not None


def _bench(graph: Graph, node: onnx.NodeProto, x: list[int], y: list[int], x_full: list[int]) -> BenchSpec | None:
    handler = handler_for(node)
    return handler.bench(node, graph, x, y, x_full) if handler is not None else None


def _link(node: onnx.NodeProto) -> BenchLink | None:
    """How the micro-benchmark chains through a node (shape-preserving ops onnxruntime fuses or runs cheaply
    pass a tensor on; residual ``Add``s and gating ``Mul``s join)."""
    handler = handler_for(node)
    return handler.bench_link(node) if handler is not None else None


def _source(graph: Graph, name: str, members: set[int]) -> int | None:
    """The member node whose output reaches ``name`` through shape-preserving ops (and residual ``Add``s,
    gating ``Mul``s) only, if any: the nearest, searching the inputs in order."""
    todo, seen = [name], set()
    while todo:
        p = graph.producer.get(todo.pop(0))
        if p is None or p in seen:
            continue
        if p in members:
            return p
        seen.add(p)
        node = graph.nodes[p]
        link = _link(node)
        if link == "pass" and node.input:
            todo.append(node.input[0])
        elif link == "join":
            todo.extend(n for n in node.input if n and not graph.is_const(n))
    return None


def _mini_model(model: onnx.ModelProto, analysis: Analysis, nodes: list[int], shapes: dict[str, list[int]],
                keep: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The ``nodes`` with the widths ``keep`` gives them and random weights, in graph order: a node whose
    input comes from another (through shape-preserving ops) reads its output, as in the model, so that the
    runtime's layout choices along the chain are measured; the others read random inputs of their shape."""
    graph = analysis.graph
    rng = np.random.default_rng(0)
    parts: list[onnx.NodeProto] = []
    inputs, inits, feeds = [], [], {}
    members = sorted(nodes)
    read: set[str] = set()

    def cut(name: str) -> list[int]:
        shape = list(shapes[name])
        if name in keep:
            shape[analysis.labels[name].axis] = len(keep[name])
        return shape

    for k, i in enumerate(members):
        node = graph.nodes[i]
        x, y = cut(node.input[0]), cut(node.output[0])
        spec = _bench(graph, node, x, y, list(shapes[node.input[0]]))
        assert spec is not None  # members are measurable
        elem = graph.elem_type(node.input[0])
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        source = _source(graph, node.input[0], set(members))
        if source is not None and cut(graph.nodes[source].output[0]) == x:
            data = f"y{members.index(source)}"
            read.add(data)
        else:
            data = f"x{k}"
            inputs.append(helper.make_tensor_value_info(data, elem, x))
            feeds[data] = rng.standard_normal(x).astype(dtype)
        names = [data, f"w{k}"]
        inits.append(numpy_helper.from_array((rng.standard_normal(spec.weight) * 0.1).astype(dtype), names[1]))
        port = spec.bias_port
        if port is not None and len(node.input) > port and node.input[port]:
            bias = list(graph.const_shape(node.input[port]) or [])
            channels = y[1] if len(bias) == 1 and bias[0] == shapes[node.output[0]][1] else None
            names.append(f"b{k}")
            inits.append(numpy_helper.from_array(np.zeros(channels if channels else bias, dtype=dtype), names[2]))
        attrs = spec.attrs
        parts.append(helper.make_node(node.op_type, names, [f"y{k}"], name=f"n{k}", **attrs))
    outputs = [helper.make_tensor_value_info(f"y{k}", graph.elem_type(graph.nodes[i].input[0]), None)
               for k, i in enumerate(members) if f"y{k}" not in read]
    mini = helper.make_model(helper.make_graph(parts, "micro", inputs, outputs, inits),
                             opset_imports=list(model.opset_import))
    mini.ir_version = model.ir_version
    return mini, feeds
