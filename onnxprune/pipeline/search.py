"""Searches over the MACs budget: the deepest pruning within an accuracy drop (``--max-drop``) and the
pruning that meets a latency target (``--target-latency``). Each is a bisection that runs :func:`prune`
per candidate."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx

from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate
from onnxprune.measure.runtime import check_provider
from onnxprune.pipeline.options import PruneConfig
from onnxprune.pipeline.pruning import PruneResult, prune
from onnxprune.tuning.latency import latency_ratio

__all__ = ["prune_within", "prune_to_latency"]


def prune_within(model: onnx.ModelProto, config: PruneConfig, max_drop: float, eval_data: Dataset, *,
                 calib: Dataset | None = None, source_sha256: str | None = None, steps: int = 7) -> PruneResult:
    """The deepest pruning whose accuracy drop on ``eval_data`` (top-1 disagreement with the original where
    there are no labels) stays within ``max_drop``: a bisection over the MACs budget, evaluating each
    candidate. The report records every candidate tried."""
    if not 0.0 <= max_drop < 1.0:
        raise UsageError(f"--max-drop must be in [0, 1), got {max_drop}")
    baseline = evaluate(model, eval_data, None, config.batch_size, None, "evaluating original")
    labelled = baseline.accuracy is not None

    def drop_of(result: PruneResult) -> float:
        e = evaluate(result.model, eval_data, model, config.batch_size, None, "evaluating candidate")
        if labelled:
            assert baseline.accuracy is not None and e.accuracy is not None
            return baseline.accuracy - e.accuracy
        assert e.agreement is not None
        return 1.0 - e.agreement

    quick = replace(config, verify=False, target_params=None)
    lo, hi, best, tried = 0.0, 1.0, None, []
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = prune(model, replace(quick, target_macs=mid), calib=calib)
        drop = drop_of(candidate)
        tried.append({"target_macs": mid, "macs_kept": candidate.report["macs_kept"], "drop": drop})
        if drop <= max_drop:
            best, hi = mid, mid
        else:
            lo = mid
    final_config = replace(config, target_macs=best, target_params=None) if best is not None else \
        replace(config, ratio=0.0, target_macs=None, target_params=None)
    result = prune(model, final_config, calib=calib, eval_data=eval_data, source_sha256=source_sha256)
    result.report["max_drop"] = {"limit": max_drop, "metric": "accuracy" if labelled else "top-1 agreement",
                                 "candidates": tried}
    return result


def prune_to_latency(model: onnx.ModelProto, config: PruneConfig, target: float, *, calib: Dataset | None = None,
                     eval_data: Dataset | None = None, source_sha256: str | None = None, steps: int = 6,
                     threads: int = 1, provider: str = "CPUExecutionProvider") -> PruneResult:
    """Prune until onnxruntime runs the model in ``target`` of the original's latency (execution ``provider``,
    ``threads`` threads): a bisection over the MACs budget with the latency measured side by side at every
    candidate. ``round_to="auto"`` is measured on the same provider first."""
    if not 0.0 < target <= 1.0:
        raise UsageError(f"--target-latency is the fraction of the latency to keep, in (0, 1]; got {target}")
    check_provider(provider)
    config = config.measure_round_to(model, provider=provider, threads=threads)
    # Candidates skip calibration and recovery: neither changes the shapes, so neither changes the latency.
    quick = replace(config, verify=False, target_params=None, criterion=None, recover=None)
    lo, hi, tried = 0.0, 1.0, []
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = prune(model, replace(quick, target_macs=mid))
        ratio, ms_before, ms_after = latency_ratio(model, candidate.model, threads=threads,
                                                   input_shapes=config.input_shapes, provider=provider)
        tried.append({"target_macs": mid, "macs_kept": candidate.report["macs_kept"], "latency_ratio": ratio,
                      "ms_original": ms_before, "ms_pruned": ms_after})
        if ratio <= target:
            lo = mid  # fast enough: try keeping more
        else:
            hi = mid
    chosen = _largest_within(tried, target)
    macs = chosen["target_macs"] if chosen is not None else min(t["target_macs"] for t in tried)
    result = prune(model, replace(config, target_macs=macs, target_params=None), calib=calib, eval_data=eval_data,
                   source_sha256=source_sha256)
    final, ms_before, ms_after = latency_ratio(model, result.model, threads=threads, rounds=25,
                                               input_shapes=config.input_shapes, provider=provider)
    result.report["latency"] = {"target": target, "provider": provider, "threads": threads, "ratio": final,
                                "ms_original": ms_before, "ms_pruned": ms_after, "candidates": tried}
    return result


def _largest_within(tried: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The candidate with the largest MACs budget whose latency ratio meets ``target``."""
    return max((t for t in tried if t["latency_ratio"] <= target), key=lambda t: t["target_macs"], default=None)
