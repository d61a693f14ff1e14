"""Latency measured on the runtime that will serve the model: onnxruntime on the CPU (or another execution
provider), batch as given, sessions timed side by side so machine noise hits both alike."""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.analysis.dependency import analyze as find_groups
from onnxprune.core.graph import Graph
from onnxprune.core.progress import Progress
from onnxprune.measure.runtime import CPU, Session, provider_list, random_inputs
from onnxprune.planning.planner import PlanConfig, choose, kept_count
from onnxprune.rewriting.rewrite import apply_keep

__all__ = ["MIN_MS", "RESOLUTION", "LatencyTable", "Measurability", "Timing", "compare_latency",
           "latency_table", "measurability", "median_ci", "median_times", "repeats_for", "sample_times", "timed"]


#: The precision a timed comparison must reach: the half-width of the confidence interval of a latency ratio,
#: and how far two sessions of the same model may disagree.
RESOLUTION = 0.03
#: Below this median latency per run (ms), call overhead and scheduler noise are the same order as the
#: differences a search compares: the model is too fast to time reliably.
MIN_MS = 1.0


def sample_times(runs: Sequence[Callable[[], object]], rounds: int, warmup: int = 1, repeat: int = 1,
                 first: int = 0) -> list[list[float]]:
    """Seconds per call of each run, one entry per round: after ``warmup`` calls of each, ``rounds`` rounds call
    every run ``repeat`` times, the order rotating round by round (from ``first``) so that drift hits all alike."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for k in range(first, first + rounds):
        for j in range(len(runs)):
            i = (j + k) % len(runs)
            start = perf_counter()
            for _ in range(repeat):
                runs[i]()
            times[i].append((perf_counter() - start) / repeat)
    return times


def median_times(runs: Sequence[Callable[[], object]], rounds: int, warmup: int = 1, repeat: int = 1
                 ) -> list[float]:
    """Median seconds per call of each run (see :func:`sample_times`)."""
    return [statistics.median(t) for t in sample_times(runs, rounds, warmup, repeat)]


def repeats_for(run: Callable[[], object], seconds: float = 2e-3, most: int = 50) -> int:
    """How many calls of ``run`` (after one warm-up call) make a timing of at least ``seconds``: sub-millisecond
    runs are timed in batches so that the clock's resolution and scheduler noise do not dominate."""
    run()
    start = perf_counter()
    run()
    once = perf_counter() - start
    return max(1, min(most, math.ceil(seconds / max(once, 1e-7))))


def median_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(median, low, high): a distribution-free ~95 % confidence interval of the median from order statistics
    (the whole range for fewer than six values)."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, max(low, math.ceil(n / 2 + half) - 1))
    return statistics.median(ordered), ordered[low], ordered[high]


@dataclass
class Timing:
    """Runs timed side by side, the first the reference: per run the median milliseconds and the spread
    (interquartile range / median), and the median of the per-round ratio run / reference with its confidence
    interval. ``stable``: every interval is within ``precision`` of its median."""

    ms: list[float]
    spread: list[float]
    ratios: list[float]
    low: list[float]
    high: list[float]
    rounds: int
    repeat: int
    precision: float

    @property
    def stable(self) -> bool:
        return all((h - lo) / 2 <= self.precision for lo, h in zip(self.low, self.high))

    def to_dict(self) -> dict:
        return {"ms": self.ms, "spread": self.spread, "ratio": self.ratios, "ratio_low": self.low,
                "ratio_high": self.high, "rounds": self.rounds, "repeat": self.repeat, "stable": self.stable}


def _summary(samples: list[list[float]], repeat: int, precision: float) -> Timing:
    ms, spread, ratios, low, high = [], [], [], [], []
    for t in samples:
        q1, med, q3 = statistics.quantiles(t, n=4) if len(t) > 1 else (t[0], t[0], t[0])
        ms.append(statistics.median(t) * 1e3)
        spread.append((q3 - q1) / med if med > 0 else 0.0)
    for t in samples:
        mid, lo, hi = median_ci([b / a if a > 0 else 1.0 for a, b in zip(samples[0], t)])
        ratios.append(mid)
        low.append(lo)
        high.append(hi)
    return Timing(ms, spread, ratios, low, high, len(samples[0]), repeat, precision)


def timed(runs: Sequence[Callable[[], object]], *, rounds: int = 5, max_rounds: int | None = None,
          warmup: int = 1, repeat: int | None = None, precision: float = RESOLUTION,
          settled: Callable[[Timing], bool] | None = None) -> Timing:
    """Time ``runs`` side by side in batches of ``rounds`` interleaved rounds until every ratio to the first run
    is known within ``precision`` (or ``settled`` says the question asked is answered), at most ``max_rounds``
    (default ``4 * rounds``) rounds: more rounds where the machine is noisy, the bound where it stays so."""
    limit = max(rounds, max_rounds if max_rounds is not None else 4 * rounds)
    repeat = repeat if repeat is not None else repeats_for(runs[0])
    samples: list[list[float]] = [[] for _ in runs]
    while True:
        done = len(samples[0])
        batch = sample_times(runs, min(rounds, limit - done), warmup if not done else 0, repeat, first=done)
        for kept, new in zip(samples, batch):
            kept.extend(new)
        timing = _summary(samples, repeat, precision)
        if timing.stable or (settled is not None and settled(timing)) or timing.rounds >= limit:
            return timing


@dataclass
class Measurability:
    """Whether a model can be timed reliably here: two sessions of it timed side by side (an A/A test).
    ``reason`` says why not (``None``: it can)."""

    ms: float
    timing: Timing
    reason: str | None

    def to_dict(self) -> dict:
        return {"ms": self.ms, "measurable": self.reason is None, "reason": self.reason,
                "same_model_ratio": self.timing.ratios[1], "same_model_low": self.timing.low[1],
                "same_model_high": self.timing.high[1], "rounds": self.timing.rounds,
                "spread": self.timing.spread[0]}


def measurability(model: onnx.ModelProto, *, threads: int = 1, provider: str = CPU, rounds: int = 10,
                  input_shapes: dict[str, list[int]] | None = None, min_ms: float = MIN_MS,
                  precision: float = RESOLUTION) -> Measurability:
    """Time two sessions of ``model`` against each other: the model is too fast to time reliably when it runs
    in less than ``min_ms`` ms, or when the two differ (median ratio or its interval) by more than
    ``precision``: then any comparison of candidates would rest on noise."""
    feeds = random_inputs(model, 0, input_shapes)
    a, b = (Session(model, threads=threads, providers=provider_list(provider)) for _ in range(2))
    timing = timed([lambda: a.run(feeds), lambda: b.run(feeds)], rounds=rounds, precision=precision)
    ms = timing.ms[0]
    off = max(abs(timing.ratios[1] - 1.0), (timing.high[1] - timing.low[1]) / 2)
    reason = None
    if ms < min_ms:
        reason = f"runs in {ms:.2f} ms, below the {min_ms:g} ms per run that can be timed reliably"
    elif off > precision:
        reason = (f"runs in {ms:.2f} ms, and two sessions of it differ by up to {off:.1%} (more than the "
                  f"{precision:.0%} a comparison needs)")
    return Measurability(ms, timing, reason)


def compare_latency(original: onnx.ModelProto, candidate: onnx.ModelProto, *, threads: int = 1, rounds: int = 15,
                    warmup: int = 3, input_shapes: dict[str, list[int]] | None = None, provider: str = CPU,
                    target: float | None = None) -> Timing:
    """``candidate`` timed against ``original`` side by side until the ratio is known within
    :data:`RESOLUTION`, or its interval lies wholly on one side of ``target``."""
    feeds = random_inputs(original, 0, input_shapes)
    providers = provider_list(provider)
    a = Session(original, threads=threads, providers=providers)
    b = Session(candidate, threads=threads, providers=providers)
    settled = None if target is None else (lambda t: t.high[1] <= target or t.low[1] > target)
    return timed([lambda: a.run(feeds), lambda: b.run(feeds)], rounds=rounds, warmup=warmup, settled=settled)


@dataclass
class LatencyTable:
    """Per prunable group, the model's latency with that group alone cut to each kept fraction.

    ``groups[gid]`` holds ``widths`` (channels kept, the full size first), ``ms`` (median latency at each, the
    original first, timed in the same rounds), ``spread`` (interquartile range / median at each) and ``share``:
    the latency saved when the group keeps half its channels, as a fraction of the original's (clipped to
    [0, 1]: noise can make a cut look slower), with its confidence interval, the rounds and ``stable``.
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
                  threads: int = 1, rounds: int = 5, max_rounds: int | None = None, warmup: int = 1,
                  input_shapes: dict[str, list[int]] | None = None) -> LatencyTable:
    """Time ``model`` with each prunable group (or each of ``groups``) alone cut to each ``kept`` fraction.

    Each candidate is planned and rewritten like a real prune (the group keeps ``size - floor((1-f) * size)``
    channels, rounded for grouped convolutions) and timed in the same interleaved rounds as the original.
    Which channels go does not change the latency, so the lowest-indexed channels are kept. Rounds are added
    (up to ``max_rounds``, default ``4 * rounds``) until each cut's ratio to the original is known within
    :data:`RESOLUTION`; ``stable`` says whether it was, ``share_low``/``share_high`` bound the share.
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
            t = timed(runs, rounds=rounds, max_rounds=max_rounds, warmup=warmup, repeat=repeat)
            half = 1 + fractions.index(0.5)
            table.groups[g.id] = {"size": g.size, "widths": widths, "ms": t.ms, "spread": t.spread,
                                  "share": _clip(1.0 - t.ratios[half]), "share_low": _clip(1.0 - t.high[half]),
                                  "share_high": _clip(1.0 - t.low[half]), "rounds": t.rounds, "stable": t.stable}
            bar.advance()
    return table


def _clip(share: float) -> float:
    return min(max(share, 0.0), 1.0)
