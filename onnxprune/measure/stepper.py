"""Run a model a piece at a time on fixed batches of samples, keeping what the next pieces read.

Least-squares recovery needs, consumer after consumer, the inputs of a consumer on the pruned network as already
refitted. Running the model from its inputs for each consumer costs a model run per consumer; a :class:`Stepper`
runs each node once instead: a pass computes the tensors asked for from the values kept by earlier passes (the
*frontier*: tensors computed before that nodes not yet run still read), through a small onnxruntime session on
just the nodes in between, which holds those nodes' weights as external initializers (prepacked: a copy of one
piece's weights at a time; ``prepack=False`` feeds them as inputs, read in place) -- a weight edited since the last
pass is read anew. Nodes already run are never run again, so a node whose weights change after it ran would be stale:
callers change only nodes that have not run (a consumer is refitted before anything downstream of it runs).
When the frontier outgrows ``cache_bytes`` it is dropped, and the next pass starts from the model's inputs again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.core.graph import subgraph_reads
from onnxprune.core.inference import SMALL_CONSTANT, copy_fields
from onnxprune.core.modelio import inline_tensor, tensor_array
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import InputSession, borrowed

__all__ = ["Stepper"]

_CACHE_BYTES = 1 << 30


@dataclass
class _Pass:
    """One pass: its session (``None`` when everything asked for is already known) and what it feeds."""

    wanted: list[str]
    session: InputSession | None
    fetch: list[str]  # the session's outputs: wanted tensors it computes, then frontier tensors
    data_inputs: list[str]
    cached_inputs: list[str]
    weights: dict[str, np.ndarray]
    ran: set[str]  # outputs of the nodes this pass runs
    fetched: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per batch, kept where later read


class Stepper:
    """Passes over ``model`` on the samples ``samples`` of ``data`` in fixed batches of ``batch_size``."""

    def __init__(self, model: onnx.ModelProto, data: Dataset, samples: np.ndarray, batch_size: int,
                 cache_bytes: int = _CACHE_BYTES, prepack: bool = True) -> None:
        self.model, self.data, self.prepack = model, data, prepack
        self.batches = [samples[s:s + batch_size] for s in range(0, len(samples), batch_size)]
        self.cache_bytes = cache_bytes
        self.cache: dict[str, list[np.ndarray]] = {}
        self.ran: set[str] = set()  # outputs of the nodes already run (their values, if still read, are cached)
        self.passes = 0  # sessions built, for tests and reports
        self._feeds: dict[str, np.ndarray] | None = None
        self._batch = -1

    def start(self, wanted: list[str]) -> _Pass:
        """Prepare a pass computing ``wanted``; then call :meth:`values` for each batch and :meth:`finish`."""
        g = self.model.graph
        producer = {o: n for n in g.node for o in n.output if o}
        inits = {t.name: t for t in g.initializer}
        data_inputs = {vi.name for vi in g.input} - set(inits)
        nodes: dict[int, onnx.NodeProto] = {}
        used_data, used_cache, used_inits = set(), set(), set()
        stack = list(wanted)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if not name or name in seen:
                continue
            seen.add(name)
            if name in self.cache:
                used_cache.add(name)
            elif name in inits:
                used_inits.add(name)
            elif name in data_inputs:
                used_data.add(name)
            elif name in producer:
                node = producer[name]
                if id(node) not in nodes:
                    nodes[id(node)] = node
                    stack.extend(node.input)
                    stack.extend(_outer_reads(node))
        missing = [n for n in wanted if n not in self.cache and n not in data_inputs]
        run = [n for n in g.node if id(n) in nodes]
        ran = {o for n in run for o in n.output if o}
        if not missing:
            return _Pass(wanted, None, [], sorted(used_data), sorted(used_cache), {}, ran)
        later = self._later_reads(g, self.ran | ran)
        fetch = missing + sorted(o for o in ran if o in later and o not in missing)
        sub, weights = self._submodel(run, sorted(used_data), sorted(used_cache), sorted(used_inits), fetch)
        self.passes += 1
        if self.prepack:  # the weights live in the session (prepacked), not in every run's feeds
            return _Pass(wanted, InputSession(sub, weights=weights), fetch, sorted(used_data), sorted(used_cache),
                         {}, ran)
        return _Pass(wanted, InputSession(sub), fetch, sorted(used_data), sorted(used_cache), weights, ran)

    def values(self, p: _Pass, batch: int) -> dict[str, np.ndarray]:
        """The tensors ``p`` asked for on batch number ``batch``."""
        feeds = self._data(batch)
        known = {n: self.cache[n][batch] for n in p.wanted if n in self.cache}
        known.update({n: feeds[n] for n in p.wanted if n in feeds})
        if p.session is None:
            return known
        inputs = {**p.weights, **{n: feeds[n] for n in p.data_inputs}}
        inputs.update({n: self.cache[n][batch] for n in p.cached_inputs})
        out = dict(zip(p.fetch, p.session.run(p.fetch, inputs)))
        for name, value in out.items():
            p.fetched.setdefault(name, []).append(value)
        known.update({n: out[n] for n in p.wanted if n in out})
        return known

    def finish(self, p: _Pass) -> None:
        """Keep the frontier after ``p`` (or drop everything when it is too large to keep)."""
        self.ran |= p.ran
        later = self._later_reads(self.model.graph, self.ran)
        self.cache = {n: v for n, v in {**self.cache, **p.fetched}.items() if n in later}
        values = [a for v in self.cache.values() for a in v]
        if any(not isinstance(a, np.ndarray) for a in values) or sum(a.nbytes for a in values) > self.cache_bytes:
            self.cache, self.ran = {}, set()  # start the next pass from the model's inputs
        self._feeds, self._batch = None, -1

    def _data(self, batch: int) -> dict[str, np.ndarray]:
        if self._batch != batch or self._feeds is None:
            self._feeds, self._batch = self.data.take(self.batches[batch]), batch
        return self._feeds

    @staticmethod
    def _later_reads(g: onnx.GraphProto, ran: set[str]) -> set[str]:
        """Tensors that nodes not yet run read."""
        reads: set[str] = set()
        for n in g.node:
            if not any(o in ran for o in n.output):
                reads.update(n.input)
                reads.update(_outer_reads(n))
        return reads

    def _submodel(self, run: list[onnx.NodeProto], data: list[str], cached: list[str], inits: list[str],
                  outputs: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        src = self.model
        sub = onnx.ModelProto()
        copy_fields(src, sub, skip=("graph",))
        g = sub.graph
        g.name = src.graph.name or "stepper"
        g.node.extend(run)
        declared = {vi.name: vi for vi in src.graph.input}
        g.input.extend(declared[n] for n in data)
        for name in cached:
            g.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(self.cache[name][0].dtype), None))
        weights: dict[str, np.ndarray] = {}
        by_name = {t.name: t for t in src.graph.initializer}
        for name in inits:
            t = by_name[name]
            size = int(np.prod(t.dims)) if len(t.dims) else 1
            if size <= SMALL_CONSTANT or t.data_type == TensorProto.STRING:
                g.initializer.append(inline_tensor(t))
            else:
                weights[name] = np.ascontiguousarray(tensor_array(t))
                if self.prepack:
                    g.initializer.append(borrowed(name, t.data_type, t.dims, weights[name].nbytes))
                else:
                    g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        g.output.extend(helper.make_empty_tensor_value_info(n) for n in outputs)
        return sub, weights


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """What a node's subgraphs (If/Loop/Scan bodies) may read from the enclosing graph (a superset)."""
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return set()
    holder = onnx.GraphProto()
    holder.node.append(node)
    return subgraph_reads(holder)
