"""Searches over the MACs budget: the deepest pruning within an accuracy drop (``--max-drop``) and the
pruning that meets a latency target (``--target-latency``). Each is a bisection that runs :func:`prune`
per candidate."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx

from onnxprune.core.progress import note
from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate
from onnxprune.measure.runtime import check_provider
from onnxprune.pipeline.options import PruneConfig
from onnxprune.pipeline.pruning import PruneResult, prune
from onnxprune.tuning.latency import MIN_MS, Timing, compare_latency, measurability

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
    for k in range(1, steps + 1):
        mid = (lo + hi) / 2
        candidate = prune(model, replace(quick, target_macs=mid), calib=calib)
        drop = drop_of(candidate)
        tried.append({"target_macs": mid, "macs_kept": candidate.report["macs_kept"], "drop": drop})
        note(f"--max-drop candidate {k}/{steps}: MACs {tried[-1]['macs_kept']:.3f} -> drop {drop:.4f} "
             f"(limit {max_drop})")
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
                     threads: int = 1, provider: str = "CPUExecutionProvider", min_ms: float = MIN_MS
                     ) -> PruneResult:
    """Prune until onnxruntime runs the model in ``target`` of the original's latency (execution ``provider``,
    ``threads`` threads): a bisection over the MACs budget with the latency measured side by side at every
    candidate, in rounds added until the candidate's ratio is clearly on one side of ``target`` or known within
    :data:`~onnxprune.tuning.latency.RESOLUTION`. A model that cannot be timed reliably here (faster than
    ``min_ms`` ms, or two sessions of it disagreeing by more than that resolution) is refused with a
    :class:`UsageError`. ``round_to="auto"`` is measured on the same provider first."""
    if not 0.0 < target <= 1.0:
        raise UsageError(f"--target-latency is the fraction of the latency to keep, in (0, 1]; got {target}")
    check_provider(provider)
    check = measurability(model, threads=threads, provider=provider, input_shapes=config.input_shapes,
                          min_ms=min_ms)
    if check.reason is not None:
        raise UsageError(f"--target-latency: the model {check.reason} on this machine; use --target-macs")
    config = config.measure_round_to(model, provider=provider, threads=threads)
    # Candidates skip calibration and recovery: neither changes the shapes, so neither changes the latency.
    quick = replace(config, verify=False, target_params=None, criterion=None, recover=None)
    lo, hi, tried = 0.0, 1.0, []
    for k in range(1, steps + 1):
        mid = (lo + hi) / 2
        candidate = prune(model, replace(quick, target_macs=mid))
        t = compare_latency(model, candidate.model, threads=threads, input_shapes=config.input_shapes,
                            provider=provider, target=target)
        tried.append({"target_macs": mid, "macs_kept": candidate.report["macs_kept"], **_measured(t, target)})
        note(f"--target-latency candidate {k}/{steps}: MACs {tried[-1]['macs_kept']:.3f} -> latency "
             f"{t.ratios[1]:.3f}x (target {target})")
        if t.ratios[1] <= target:
            lo = mid  # fast enough: try keeping more
        else:
            hi = mid
    chosen = _largest_within(tried, target)
    macs = chosen["target_macs"] if chosen is not None else min(t["target_macs"] for t in tried)
    result = prune(model, replace(config, target_macs=macs, target_params=None), calib=calib, eval_data=eval_data,
                   source_sha256=source_sha256)
    final = compare_latency(model, result.model, threads=threads, rounds=25, input_shapes=config.input_shapes,
                            provider=provider)
    measured = {k: v for k, v in _measured(final).items() if k != "latency_ratio"}
    result.report["latency"] = {"target": target, "provider": provider, "threads": threads, **measured,
                                "ratio": final.ratios[1], "timing_check": check.to_dict(), "candidates": tried,
                                "undecided": [t["target_macs"] for t in tried if not t["decided"]]}
    return result


def _measured(t: Timing, target: float | None = None) -> dict[str, Any]:
    """A comparison as the report lists it: the ratio with its interval, both medians and spreads, the rounds,
    and whether the interval lies wholly on one side of ``target``."""
    out = {"latency_ratio": t.ratios[1], "ratio_low": t.low[1], "ratio_high": t.high[1], "ms_original": t.ms[0],
           "ms_pruned": t.ms[1], "spread_original": t.spread[0], "spread_pruned": t.spread[1], "rounds": t.rounds,
           "stable": t.stable}
    if target is not None:
        out["decided"] = t.high[1] <= target or t.low[1] > target
    return out


def _largest_within(tried: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The candidate with the largest MACs budget whose latency ratio meets ``target``."""
    return max((t for t in tried if t["latency_ratio"] <= target), key=lambda t: t["target_macs"], default=None)
