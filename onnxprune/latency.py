"""Latency measured on the runtime that will serve the model: onnxruntime on the CPU (or another execution
provider), batch as given, sessions timed side by side so machine noise hits both alike."""
from __future__ import annotations

import statistics
import time

import onnx

from .runtime import Session, random_inputs

__all__ = ["latency_ratio"]


def latency_ratio(original: onnx.ModelProto, candidate: onnx.ModelProto, *, threads: int = 1, rounds: int = 15,
                  warmup: int = 3, input_shapes: dict[str, list[int]] | None = None) -> tuple[float, float, float]:
    """(candidate / original median latency, original ms, candidate ms), runs interleaved round by round."""
    feeds = random_inputs(original, 0, input_shapes)
    a, b = Session(original, threads=threads), Session(candidate, threads=threads)
    for _ in range(warmup):
        a.run(feeds)
        b.run(feeds)
    times_a, times_b = [], []
    for k in range(rounds):
        first, second = (a, b) if k % 2 == 0 else (b, a)
        for session in (first, second):
            start = time.perf_counter()
            session.run(feeds)
            (times_a if session is a else times_b).append(time.perf_counter() - start)
    ms_a, ms_b = statistics.median(times_a) * 1e3, statistics.median(times_b) * 1e3
    return (ms_b / ms_a if ms_a > 0 else 1.0), ms_a, ms_b
