"""Latency measured on the runtime that will serve the model: onnxruntime on the CPU (or another execution
provider), batch as given, sessions timed side by side so machine noise hits both alike."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.analysis.dependency import analyze as find_groups
from onnxprune.core.graph import Graph
from onnxprune.core.progress import Progress
from onnxprune.measure.runtime import CPU, Session, provider_list, random_inputs
from onnxprune.planning.planner import PlanConfig, choose, kept_count
from onnxprune.rewriting.rewrite import apply_keep

__all__ = ["LatencyTable", "latency_ratio", "latency_table", "median_times", "repeats_for"]


def median_times(runs: Sequence[Callable[[], object]], rounds: int, warmup: int = 1, repeat: int = 1
                 ) -> list[float]:
    """Median seconds per call of each run: after ``warmup`` calls of each, ``rounds`` rounds call every run
    ``repeat`` times, the order rotating round by round so that drift hits all of them alike."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for k in range(rounds):
        for j in range(len(runs)):
            i = (j + k) % len(runs)
            start = time.perf_counter()
            for _ in range(repeat):
                runs[i]()
            times[i].append((time.perf_counter() - start) / repeat)
    return [statistics.median(t) for t in times]


def repeats_for(run: Callable[[], object], seconds: float = 2e-3, most: int = 50) -> int:
    """How many calls of ``run`` (after one warm-up call) make a timing of at least ``seconds``: sub-millisecond
    runs are timed in batches so that the clock's resolution and scheduler noise do not dominate."""
    run()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(1, min(most, math.ceil(seconds / max(once, 1e-7))))


def latency_ratio(original: onnx.ModelProto, candidate: onnx.ModelProto, *, threads: int = 1, rounds: int = 15,
                  warmup: int = 3, input_shapes: dict[str, list[int]] | None = None,
                  provider: str = CPU) -> tuple[float, float, float]:
    """(candidate / original median latency, original ms, candidate ms), runs interleaved round by round."""
    feeds = random_inputs(original, 0, input_shapes)
    providers = provider_list(provider)
    a = Session(original, threads=threads, providers=providers)
    b = Session(candidate, threads=threads, providers=providers)
    ms_a, ms_b = (t * 1e3 for t in median_times([lambda: a.run(feeds), lambda: b.run(feeds)], rounds, warmup))
    return (ms_b / ms_a if ms_a > 0 else 1.0), ms_a, ms_b


@dataclass
class LatencyTable:
    """Per prunable group, the model's latency with that group alone cut to each kept fraction.

    ``groups[gid]`` holds ``widths`` (channels kept, the full size first), ``ms`` (median latency at each, the
    original first, timed in the same rounds) and ``share``: the latency saved when the group keeps half its
    channels, as a fraction of the original's (clipped to [0, 1]: noise can make a cut look slower).
    """

    provider: str
    threads: int
    rounds: int
    kept: list[float]  # kept fractions, 1.0 (the original) first
    groups: dict[int, dict] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # prunable groups not measured

    @property
    def ms_original(self) -> float:
        return statistics.median(r["ms"][0] for r in self.groups.values()) if self.groups else 0.0

    def share(self, gid: int) -> float | None:
        row = self.groups.get(gid)
        return None if row is None else row["share"]

    def to_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "rounds": self.rounds, "kept": self.kept,
                "ms_original": self.ms_original, "skipped": self.skipped,
                "groups": [{"id": gid, **row} for gid, row in sorted(self.groups.items())]}


def latency_table(model: onnx.ModelProto, kept: Sequence[float] = (0.75, 0.5, 0.25), *,
                  groups: Sequence[int] | None = None, analysis: Analysis | None = None, provider: str = CPU,
                  threads: int = 1, rounds: int = 5, warmup: int = 1,
                  input_shapes: dict[str, list[int]] | None = None) -> LatencyTable:
    """Time ``model`` with each prunable group (or each of ``groups``) alone cut to each ``kept`` fraction.

    Each candidate is planned and rewritten like a real prune (the group keeps ``size - floor((1-f) * size)``
    channels, rounded for grouped convolutions) and timed in the same interleaved rounds as the original.
    Which channels go does not change the latency, so the lowest-indexed channels are kept.
    """
    fractions = sorted({float(f) for f in kept if 0.0 < f < 1.0} | {0.5}, reverse=True)
    analysis = analysis if analysis is not None else find_groups(Graph.build(model))
    prunable = [g for g in analysis.groups if g.prunable]
    wanted = set(groups) if groups is not None else {g.id for g in prunable}
    chosen = [g for g in prunable if g.id in wanted]
    table = LatencyTable(provider, threads, rounds, [1.0] + fractions,
                         skipped=[g.id for g in prunable if g.id not in wanted])
    if not chosen:
        return table
    feeds = random_inputs(model, 0, input_shapes)
    providers = provider_list(provider)
    original = Session(model, threads=threads, providers=providers)
    scores = {g.id: np.zeros(g.size) for g in analysis.groups}
    repeat = repeats_for(lambda: original.run(feeds))
    with Progress("timing groups", len(chosen)) as bar:
        for g in chosen:
            widths, sessions = [g.size], [original]
            for f in fractions:
                target = kept_count(g.size, 1.0 - f)
                removed = choose(analysis, scores, PlanConfig(ratio=0.0), {g.id: target}).get(g.id)
                if removed is None:
                    widths.append(g.size)
                    sessions.append(original)
                    continue
                widths.append(g.size - len(removed))
                candidate = apply_keep(analysis, analysis.keep_positions({g.id: removed}))
                sessions.append(Session(candidate, threads=threads, providers=providers))
            runs = [(lambda s=s: s.run(feeds)) for s in sessions]
            ms = [t * 1e3 for t in median_times(runs, rounds, warmup, repeat)]
            half = ms[1 + fractions.index(0.5)]
            share = min(max((ms[0] - half) / ms[0], 0.0), 1.0) if ms[0] > 0 else 0.0
            table.groups[g.id] = {"size": g.size, "widths": widths, "ms": ms, "share": share}
            bar.advance()
    return table
