"""What a run costs, stage by stage (wall time, peak memory), and whether a model can fit before work starts.

The report's ``resources`` entry lists the stages in order, each with its seconds, the process's peak resident
memory at its end (``ru_maxrss``: the stage where the peak rises is where the memory went) and the resident
memory left when it ended. :func:`check_fits` refuses, in one line, a model whose estimated need exceeds the
memory available (``MemAvailable`` of ``/proc/meminfo``) instead of letting the system kill the run.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import onnx

from onnxprune.core.modelio import _data_bytes, read_in_place
from onnxprune.errors import OnnxPruneError

__all__ = ["Stages", "peak_rss", "current_rss", "available_memory", "estimate_need", "check_fits",
           "MemoryNeedError"]

#: Memory of the interpreter with onnx, onnxruntime and numpy loaded, before any model.
BASE_BYTES = 300 << 20
#: Peak memory per byte of weights, measured (tools/results/large.md) with some margin: (read in place,
#: loaded whole) x (no verification, verified, calibrated).
#: ``analyze`` runs pruned variants beside the original as calibration does; ``train`` (finetune, the training
#: schedules) holds the torch parameters, their gradients and Adam's two moments (4x) beside the loaded model.
_FACTORS = {(True, "none"): 0.8, (True, "verify"): 1.5, (True, "calib"): 2.0, (True, "analyze"): 2.0,
            (True, "train"): 5.0, (False, "none"): 2.0, (False, "verify"): 2.6, (False, "calib"): 3.0,
            (False, "analyze"): 3.0, (False, "train"): 6.0}
_WHAT = {"none": "prune", "verify": "prune and verify", "calib": "prune and calibrate",
         "analyze": "analyse", "train": "train"}


class MemoryNeedError(OnnxPruneError):
    """The model will not fit in the memory available (exit code 1)."""


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def current_rss() -> int:
    """The process's resident memory now, in bytes (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Stages:
    """Records the stages of a run: ``with stages.stage("rewrite"): ...``."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._start = self._last = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record(name, start)

    def mark(self, name: str) -> None:
        """Record the work since the last stage ended as stage ``name`` (work not wrapped in :meth:`stage`)."""
        self._record(name, self._last)

    def _record(self, name: str, start: float) -> None:
        self._last = time.perf_counter()
        self.entries.append({"stage": name, "seconds": round(self._last - start, 3), "rss_peak_bytes": peak_rss(),
                             "rss_end_bytes": current_rss()})

    def to_dict(self) -> dict[str, Any]:
        """The report's ``resources`` entry."""
        return {"wall_seconds": round(time.perf_counter() - self._start, 3), "rss_peak_bytes": peak_rss(),
                "stages": list(self.entries)}


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_need(model: onnx.ModelProto, mode: str) -> int:
    """Bytes of memory a run on ``model`` needs at its peak; ``mode`` is ``none``, ``verify``, ``calib``,
    ``analyze`` or ``train``."""
    return BASE_BYTES + int(_data_bytes(model) * _FACTORS[(read_in_place(model), mode)])


def check_fits(model: onnx.ModelProto, name: str, mode: str, available: int | None = None,
               beside: onnx.ModelProto | None = None) -> None:
    """Raise :class:`MemoryNeedError` when the estimated need exceeds the memory available now (``beside``: a
    second model the run holds, a teacher, counted as verified)."""
    free = available_memory() if available is None else available
    need = estimate_need(model, mode) + (estimate_need(beside, "verify") - BASE_BYTES if beside is not None else 0)
    if free is None or need <= free or os.environ.get("ONNXPRUNE_SKIP_MEMORY_CHECK"):
        return
    what = _WHAT[mode]
    hint = "; --no-verify needs less" if mode in ("verify", "calib") else ""
    raise MemoryNeedError(f"'{name}' needs about {need / 1e9:.1f} GB of memory to {what} "
                          f"({_data_bytes(model) / 1e9:.1f} GB of weights), but only {free / 1e9:.1f} GB is "
                          f"available{hint} (ONNXPRUNE_SKIP_MEMORY_CHECK=1 tries anyway)")
