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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

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
from onnxprune.tuning.latency import median_ci, repeats_for, sample_times

__all__ = ["CANDIDATES", "Rounding", "auto_round_to"]

#: The multiples tried per group.
CANDIDATES = (1, 4, 8, 16)
#: Kept fractions of a group at which rounding is measured.
BASES = (0.25, 0.5, 0.75)


@dataclass
class Rounding:
    """The chosen multiple per group id and, per measured group, the median time ratio of each candidate
    (time at the rounded widths / time at the unrounded ones: below 1 means rounding is faster) with its
    confidence interval and the rounds it took. ``unstable``: groups whose choice rested on differences within
    the timing noise after the most rounds allowed; they are not rounded (multiple 1)."""

    multiples: dict[int, int]
    ratios: dict[int, dict[int, float]] = field(default_factory=dict)
    provider: str = CPU
    threads: int = 1
    intervals: dict[int, dict[int, tuple[float, float]]] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)
    unstable: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "unstable": self.unstable,
                "groups": [{"id": gid, "multiple": m,
                            "ratios": {str(k): v for k, v in self.ratios.get(gid, {}).items()},
                            "intervals": {str(k): list(v) for k, v in self.intervals.get(gid, {}).items()},
                            "rounds": self.rounds.get(gid), "within_noise": gid in self.unstable}
                           for gid, m in sorted(self.multiples.items())]}


def auto_round_to(model: onnx.ModelProto, analysis: Analysis | None = None, *,
                  candidates: Sequence[int] = CANDIDATES, provider: str = CPU, threads: int = 1, rounds: int = 7,
                  max_rounds: int | None = None, warmup: int = 2, tolerance: float = 0.03,
                  input_shapes: dict[str, list[int]] | None = None) -> Rounding:
    """Measure the kept-count multiple each prunable group of ``model`` should be rounded to (see the module
    docstring). Groups without a Conv/Gemm/MatMul, or too small for any candidate above 1, get 1. Rounds are
    added (up to ``max_rounds``, default ``3 * rounds``) until every candidate is clearly within or beyond the
    limit; a group whose choice still rests on noise then falls back to 1 and is listed in ``unstable``."""
    analysis = analysis if analysis is not None else find_groups(Graph.build(model))
    shapes = concrete_shapes(model, static_input_shapes(model, input_shapes))
    scores = {g.id: np.zeros(g.size) for g in analysis.groups}
    result = Rounding({}, provider=provider, threads=threads)
    prunable = [g for g in analysis.groups if g.prunable]
    bound = max(rounds, max_rounds if max_rounds is not None else 3 * rounds)
    with Progress("measuring channel rounding", len(prunable)) as bar:
        for g in prunable:
            result.multiples[g.id] = 1
            options = sorted({1, *(m for m in candidates if 1 < m < g.size)})
            heavy = [i for i in g.nodes if _measurable(analysis.graph, i, shapes)]
            if len(options) > 1 and heavy:
                runs, ratio_of = _benchmark(model, analysis, g, heavy, shapes, scores, options, provider, threads)
                ratios, intervals, done = _measure(runs, ratio_of, options, rounds, bound, warmup, tolerance)
                chosen, noisy = _choose(ratios, intervals, tolerance)
                result.multiples[g.id] = 1 if noisy else chosen
                result.ratios[g.id], result.intervals[g.id], result.rounds[g.id] = ratios, intervals, done
                if noisy:
                    result.unstable.append(g.id)
            bar.advance()
    return result


def _choose(ratios: dict[int, float], intervals: dict[int, tuple[float, float]], tolerance: float
            ) -> tuple[int, bool]:
    """The largest multiple whose median ratio is within ``tolerance`` of the fastest and no slower than not
    rounding, and whether that rests on noise: a larger multiple whose interval straddles the limit."""
    limit = min(min(ratios.values()) + tolerance, 1.0)
    chosen = max(m for m in ratios if ratios[m] <= limit)
    clearly = max((m for m in ratios if intervals[m][1] <= limit), default=1)
    noisy = any(m > clearly and intervals[m][0] <= limit < intervals[m][1] for m in ratios)
    return chosen, noisy


def _benchmark(model: onnx.ModelProto, analysis: Analysis, g: PruneGroup, heavy: list[int],
               shapes: dict[str, list[int]], scores: dict[int, np.ndarray], options: list[int], provider: str,
               threads: int) -> tuple[list[Callable[[], object]], Callable[[list[float]], dict[int, float]]]:
    """The micro-benchmark's runs (one per distinct width) and how one round's times become, per candidate m,
    the mean over the base widths of time(rounded up to m) / time(unrounded)."""
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
    runs: list[Callable[[], object]] = [partial(sessions[w].run, feeds[w]) for w in order]
    at = {w: i for i, w in enumerate(order)}

    def ratio_of(seconds: list[float]) -> dict[int, float]:
        return {m: float(np.mean([seconds[at[width[n, m]]] / seconds[at[width[n, 1]]] for n in bases]))
                for m in options}
    return runs, ratio_of


def _measure(runs: list[Callable[[], object]], ratio_of: Callable[[list[float]], dict[int, float]],
             options: list[int], rounds: int, bound: int, warmup: int, tolerance: float
             ) -> tuple[dict[int, float], dict[int, tuple[float, float]], int]:
    """Per candidate, the median over rounds of its per-round ratio and the median's confidence interval,
    timed in batches of ``rounds`` until no interval straddles the choice's limit, at most ``bound`` rounds."""
    repeat = repeats_for(runs[0])
    per_round: list[dict[int, float]] = []
    while True:
        batch = sample_times(runs, min(rounds, bound - len(per_round)), warmup if not per_round else 0, repeat,
                             first=len(per_round))
        per_round += [ratio_of([t[k] for t in batch]) for k in range(len(batch[0]))]
        stats = {m: median_ci([r[m] for r in per_round]) for m in options}
        ratios = {m: float(v[0]) for m, v in stats.items()}
        intervals = {m: (float(v[1]), float(v[2])) for m, v in stats.items()}
        limit = min(min(ratios.values()) + tolerance, 1.0)
        if len(per_round) >= bound or not any(lo <= limit < hi for lo, hi in intervals.values()):
            return ratios, intervals, len(per_round)


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
