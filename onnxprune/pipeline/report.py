"""Reports: the one place where the JSON report of a run is assembled (prune, apply, fine-tune); the searches
of :mod:`onnxprune.pipeline.search` add their candidates, the command line the files it wrote."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune import __version__
from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import static_input_shapes
from onnxprune.core.modelio import file_sha256
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import Evaluation, evaluate
from onnxprune.measure.stats import group_rows, model_stats
from onnxprune.rewriting.verify import Verification
from onnxprune.training.finetune import FinetuneConfig, FinetuneResult

if TYPE_CHECKING:
    from onnxprune.pipeline.options import PruneConfig

__all__ = ["tool", "model_report", "prune_report", "apply_report", "finetune_report", "evaluation", "established",
           "file_entry", "final_metric"]


def tool() -> dict[str, str]:
    """The ``tool`` entry every report starts with."""
    return {"name": "onnxprune", "version": __version__}


def file_entry(path: Path) -> dict[str, Any]:
    """The ``input`` (or ``output``) entry of every report and JSON summary: ``{"path", "bytes"}``."""
    return {"path": str(path), "bytes": path.stat().st_size}


def established(report: dict[str, Any], calibrated: bool) -> dict[str, bool]:
    """What a prune run established and what it did not: the rewrite verified, the accuracy measured (``--eval``),
    the channels scored and the model repaired on data (``--calib``, or a training schedule's data)."""
    return {"verified": report.get("verification") is not None, "accuracy": bool(report.get("evaluation")),
            "calibrated": calibrated}


def model_report(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                 removed: dict[int, np.ndarray], verification: Verification | None,
                 input_shapes: dict[str, list[int]] | None, head: dict[str, Any],
                 tail: dict[str, Any] | None = None) -> dict[str, Any]:
    """``tool``, then ``head``, then the model before and after, the groups and the verification, then
    ``tail``: the body shared by the prune and apply reports."""
    shapes = static_input_shapes(original, input_shapes)
    before = model_stats(original, shapes)
    after = model_stats(pruned, shapes) if pruned is not original else before
    return {
        "tool": tool(),
        **head,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "macs_kept": after.macs / before.macs if before.macs else 1.0,
        "params_kept": after.params / before.params if before.params else 1.0,
        "groups": group_rows(analysis, removed, before.macs_per_node),
        "verification": verification.to_dict() if verification else None,
        **(tail or {}),
    }


def prune_report(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                 removed: dict[int, np.ndarray], verification: Verification | None, config: PruneConfig,
                 resolved: tuple[str, str], sha: str) -> dict[str, Any]:
    """The report of :func:`onnxprune.pipeline.pruning.prune`: the effective options (``resolved`` criterion
    and recovery) and the source model's hash first."""
    criterion, recovery = resolved
    options = asdict(config)
    options.update(exclude=list(config.exclude), criterion=criterion, recover=recovery)
    return model_report(original, pruned, analysis, removed, verification, config.input_shapes,
                        {"model_sha256": sha, "options": options})


def apply_report(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis,
                 removed: dict[int, np.ndarray], verification: Verification | None,
                 input_shapes: dict[str, list[int]] | None, plan_sha: str | None) -> dict[str, Any]:
    """The report of :func:`onnxprune.pipeline.pruning.apply_plan`."""
    return model_report(original, pruned, analysis, removed, verification, input_shapes,
                        {"plan_model_sha256": plan_sha}, {"options": {"plan": True}})


def evaluation(original: onnx.ModelProto, pruned: onnx.ModelProto, data: Dataset, batch_size: int
               ) -> dict[str, Any]:
    """The ``evaluation`` entry: accuracy and fidelity before and after (and, for class folders, which folder
    gave which label)."""
    entry: dict[str, Any] = {
        "before": evaluate(original, data, None, batch_size, None, "evaluating original").to_dict(),
        "after": evaluate(pruned, data, original, batch_size, None, "evaluating pruned").to_dict(),
    }
    if data.classes is not None:
        entry["classes"] = data.classes
    return entry


def finetune_report(source: Path, teacher: Path | None, config: FinetuneConfig, result: FinetuneResult,
                    tuned_eval: Evaluation | None) -> dict[str, Any]:
    """The report of ``onnxprune finetune``: the input file (as prune's: path and bytes) and its hash, the
    teacher, the options, every epoch, the evaluation of the kept weights and the final metric; the command
    line adds the ``output`` it wrote."""
    report = {"tool": tool(), "input": file_entry(source), "input_sha256": file_sha256(source),
              "teacher": str(teacher) if teacher else None, "options": asdict(config), **result.to_dict(),
              "final": final_metric(result, tuned_eval)}
    if tuned_eval is not None:
        report["evaluation"] = tuned_eval.to_dict()
    return report


def final_metric(result: FinetuneResult, tuned_eval: Evaluation | None) -> dict[str, Any]:
    """The kept epoch and its measure: accuracy (labels), top-1 agreement with the teacher, or the training loss
    where nothing was evaluated."""
    kept = next((h for h in result.history if h["epoch"] == result.best_epoch), None) or {}
    final: dict[str, Any] = {"epoch": result.best_epoch, "loss": kept.get("loss")}
    if tuned_eval is not None and tuned_eval.accuracy is not None:
        final.update(metric="accuracy", value=tuned_eval.accuracy)
    elif tuned_eval is not None and tuned_eval.agreement is not None:
        final.update(metric="agreement", value=tuned_eval.agreement)
    else:
        final.update(metric="loss", value=kept.get("loss"))
    return final
