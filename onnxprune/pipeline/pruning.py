"""``prune()``: analysis -> scores -> plan -> rewrite -> verification -> report, in one direction.

The options and their validation are in :mod:`onnxprune.pipeline.options`, the searches over a budget
(``--max-drop``, ``--target-latency``) in :mod:`onnxprune.pipeline.search`, the report in
:mod:`onnxprune.pipeline.report`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx

import onnxprune.training  # noqa: F401 - registers the criteria of the training stage (taylor)
from onnxprune.analysis.dependency import Analysis, analyze
from onnxprune.core.graph import Graph, light_model, static_input_shapes
from onnxprune.core.modelio import in_place, tensor_array
from onnxprune.core.progress import note
from onnxprune.errors import PlanError, UsageError
from onnxprune.measure.calibrate import collect, consumer_inputs
from onnxprune.measure.data import Dataset
from onnxprune.pipeline.options import (
    AUTO_BALANCED_ROUNDS,
    DEFAULT_DATA_CRITERION,
    SCHEDULES,
    TRAINING_SCHEDULES,
    PruneConfig,
)
from onnxprune.pipeline.report import apply_report, evaluation, prune_report
from onnxprune.pipeline.resources import Stages
from onnxprune.planning.budget import plan_for_budget
from onnxprune.planning.criteria import Statistics, get_criterion, score
from onnxprune.planning.plan import Plan
from onnxprune.planning.planner import choose, kept_count
from onnxprune.rewriting.recover import recover
from onnxprune.rewriting.rewrite import apply_keep
from onnxprune.rewriting.verify import Verification, verify

__all__ = ["PruneConfig", "PruneResult", "prune", "apply_plan", "model_sha256", "DEFAULT_DATA_CRITERION",
           "SCHEDULES", "TRAINING_SCHEDULES", "StepHooks"]


class StepHooks(Protocol):
    """Training between the steps of a schedule (see :mod:`onnxprune.training.schedules`)."""

    def before(self, step: int, model: onnx.ModelProto, analysis: Analysis, kept: dict[int, int]
               ) -> tuple[onnx.ModelProto, dict[int, np.ndarray] | None]:
        """Train ``model`` before a step that keeps ``kept[group id]`` channels; may return the scores."""

    def after(self, step: int, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """Train the pruned ``model``; ``None`` rejects the step and ends the schedule."""

    def report(self) -> dict:
        """What the training did, for the report."""


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    report: dict
    analysis: Analysis
    verification: Verification | None = None
    removed: dict[int, np.ndarray] = field(default_factory=dict)


def model_sha256(model: onnx.ModelProto) -> str:
    """A content hash of an in-memory model, computed tensor by tensor (never serializing it whole).

    The CLI records the input file's sha256 instead.
    """
    h = hashlib.sha256(light_model(model).SerializeToString(deterministic=True))
    for t in model.graph.initializer:
        h.update(t.name.encode())
        if in_place(t):  # the bytes, read through the map (the same digest as the model loaded whole)
            h.update(tensor_array(t).data)
        else:
            h.update(t.raw_data if t.HasField("raw_data") else t.SerializeToString(deterministic=True))
    return h.hexdigest()


_DEFAULTS = PruneConfig()


def prune(model: onnx.ModelProto, config: PruneConfig = _DEFAULTS, *, calib: Dataset | None = None,
          eval_data: Dataset | None = None, source_sha256: str | None = None,
          hooks: StepHooks | None = None, stages: Stages | None = None) -> PruneResult:
    """Prune ``model`` (never modified) and return the new model, its plan and a report.

    With ``calib`` the channels are scored on how the model behaves on those samples and the pruned model is
    repaired without training (``config.recover``); ``eval_data`` adds accuracy/fidelity before and after.
    ``hooks`` train the model between the steps of the ``dropnet`` and ``auto-balanced`` schedules.
    ``stages`` records each stage's time and memory (the report's ``resources``; a new record by default).
    Raises :class:`~onnxprune.errors.UsageError` for bad options and
    :class:`~onnxprune.errors.VerificationError` when the result fails verification.
    """
    criterion, recovery = config.resolved(calib is not None)
    config = config.measure_round_to(model)  # round_to="auto": measured once per model, on the CPU
    if (config.schedule in TRAINING_SCHEDULES) != (hooks is not None):
        raise UsageError(f"the {config.schedule} schedule trains between steps: it needs training data (--data)"
                         if hooks is None else f"training hooks need a training schedule, not {config.schedule}")
    stages = stages if stages is not None else Stages()
    with stages.stage("analysis"):
        graph = Graph.build(model)
        analysis = analyze(graph, config.exclude)
    steps = _schedule(config)
    run = _Steps(model, analysis, config, criterion, recovery, calib, hooks, stages)
    for k, ratio in enumerate(steps):
        if len(steps) > 1:
            note(f"{config.schedule} step {k + 1}/{len(steps)}: removing {ratio:.0%} of the remaining channels")
        if not run.step(k, ratio, steps):
            break
    current = run.current
    total_keep = {n: v for n, v in run.total_keep.items() if n in analysis.labels}
    removed = _removed_units(analysis, total_keep)
    order = [o for node in graph.nodes for o in node.output]
    sha = source_sha256 if source_sha256 is not None else model_sha256(model)
    plan = Plan.from_keep(total_keep, analysis.labels, sha, order)
    verification = None
    if config.verify:
        with stages.stage("verification"):
            verification = verify(model, current, plan, graph=graph, seed=config.seed,
                                  input_shapes=config.input_shapes, tolerance=config.tolerance,
                                  mask_check=recovery == "none" and hooks is None)
    with stages.stage("report"):
        report = prune_report(model, current, analysis, removed, verification, config, (criterion, recovery),
                              sha)
    if hooks is not None:
        report["training"] = {**hooks.report(), "planned_steps": len(steps)}
    if eval_data is not None:
        with stages.stage("evaluation"):
            report["evaluation"] = evaluation(model, current, eval_data, config.batch_size)
    report["resources"] = stages.to_dict()
    return PruneResult(current, plan, report, analysis, verification, removed)


class _Steps:
    """The state of a prune run from one step of its schedule to the next."""

    def __init__(self, original: onnx.ModelProto, analysis: Analysis, config: PruneConfig, criterion: str,
                 recovery: str, calib: Dataset | None, hooks: StepHooks | None, stages: Stages) -> None:
        self.original, self.analysis, self.config, self.stages = original, analysis, config, stages
        self.criterion, self.recovery, self.calib, self.hooks = criterion, recovery, calib, hooks
        self.current, self.step_analysis = original, analysis
        self.total_keep: dict[str, np.ndarray] = {}

    def step(self, k: int, ratio: float, steps: list[float]) -> bool:
        """Run step ``k`` (removing ``ratio`` of what is left); ``False`` ends the schedule."""
        config = self.config
        kept = None
        if k > 0 and not config.global_ranking:  # count from the original sizes: rounding never accumulates
            kept = _step_targets(self.analysis, self.step_analysis,
                                 1.0 - float(np.prod([1 - r for r in steps[:k + 1]])))
        trained_scores = self._train(k, ratio, kept)
        with self.stages.stage("scores" if self.calib is None else "calibration and scores"):
            stats, scores = self._scores()
        scores.update(trained_scores or {})
        with self.stages.stage("plan"):
            removed_now = self._choose(ratio, scores, kept)
            keep = self.step_analysis.keep_positions(removed_now)
        if not keep:
            return False
        with self.stages.stage("rewrite"):
            pruned = apply_keep(self.step_analysis, keep)
        if self.recovery != "none":
            with self.stages.stage("recovery"):
                pruned = recover(self.current, pruned, self.step_analysis, keep, self.recovery,
                                 dict(stats) if stats is not None else None, self.calib, config.batch_size,
                                 config.calib_samples, config.seed,
                                 (self.original, _compose(self.total_keep, keep)) if k else None)
        if self.hooks is not None:
            trained = self.hooks.after(k, pruned)
            if trained is None:
                return False
            pruned = trained
        self.current = pruned
        self.total_keep = _compose(self.total_keep, keep)
        if k + 1 < len(steps):
            self.step_analysis = analyze(Graph.build(self.current), config.exclude)
        return True

    def _train(self, k: int, ratio: float, kept: dict[int, int] | None) -> dict[int, np.ndarray] | None:
        """Train before step ``k`` (training schedules); the scores the training measured, if any."""
        if self.hooks is None:
            return None
        targets = kept or {g.id: kept_count(g.size, ratio) for g in self.step_analysis.groups}
        trained, trained_scores = self.hooks.before(k, self.current, self.step_analysis, targets)
        if trained is not self.current:
            self.current, self.step_analysis = trained, analyze(Graph.build(trained), self.config.exclude)
        return trained_scores

    def _scores(self) -> tuple[Mapping[str, Any] | None, dict[int, np.ndarray]]:
        """(the channel statistics recovery reads, the criterion's scores) of the current model."""
        if self.calib is None:
            return None, score(self.step_analysis, self.criterion, self.config.seed, None)
        entry = get_criterion(self.criterion)
        stats = self._statistics(entry.statistics or collect)
        scores = score(self.step_analysis, self.criterion, self.config.seed, stats)
        if entry.needs == "gradients" and self.recovery != "none":  # recovery reads activation statistics
            stats = self._statistics(collect)
        return stats, scores

    def _statistics(self, measure: Statistics) -> Mapping[str, Any]:
        assert self.calib is not None
        names = consumer_inputs(self.step_analysis)
        return measure(self.current, names, {n: self.step_analysis.labels[n].axis for n in names}, self.calib,
                       self.config.batch_size, self.config.calib_samples)

    def _choose(self, ratio: float, scores: dict[int, np.ndarray], kept: dict[int, int] | None
                ) -> dict[int, np.ndarray]:
        config = self.config
        if config.budget is not None:
            kind, target = config.budget
            return plan_for_budget(self.current, self.step_analysis, scores, config.plan_config(ratio), kind,
                                   target, static_input_shapes(self.original, config.input_shapes))
        return choose(self.step_analysis, scores, config.plan_config(ratio), kept)


def apply_plan(model: onnx.ModelProto, plan: Plan, *, verify_result: bool = True, seed: int = 0,
               input_shapes: dict[str, list[int]] | None = None, tolerance: float = 1e-4) -> PruneResult:
    """Re-apply a saved (or hand-edited) plan to ``model``: the same architecture, maybe other weights.

    Every plan entry must name a channel tensor of the model with the same axis and size. A channel dropped
    from any listed tensor is removed from its whole group (so a hand edit of one tensor is enough); the
    result's plan lists every tensor that shrank.
    """
    graph = Graph.build(model)
    analysis = analyze(graph)
    wanted = plan.keep_map()
    plan.check(analysis.labels)
    removed = _dropped_units(analysis, wanted)
    _check_cuts(analysis, removed)
    keep = analysis.keep_positions(removed)
    order = [o for node in graph.nodes for o in node.output]
    plan = Plan.from_keep(keep, analysis.labels, plan.model_sha256, order)  # the whole groups, as applied
    pruned = apply_keep(analysis, keep) if keep else model
    verification = verify(model, pruned, plan, graph=graph, seed=seed, input_shapes=input_shapes,
                          tolerance=tolerance) if verify_result else None
    report = apply_report(model, pruned, analysis, removed, verification, input_shapes, plan.model_sha256)
    return PruneResult(pruned, plan, report, analysis, verification, removed)


def _check_cuts(analysis: Analysis, removed: dict[int, np.ndarray]) -> None:
    """Refuse a plan that cuts a blocked group, cuts grouped-convolution groups unevenly or empties a group."""
    for gid in removed:
        group = analysis.groups[gid]
        if group.blocked:
            raise PlanError(f"the plan cuts group {gid}, which cannot be pruned: {group.blocked}")
        if group.cells is not None and len({int(np.isin(c, removed[gid]).sum()) for c in group.cells}) > 1:
            raise PlanError(f"the plan cuts group {gid} unevenly across its grouped-convolution groups")
        if len(removed[gid]) >= group.size:
            raise PlanError(f"the plan removes every channel of group {gid}")


def _schedule(config: PruneConfig) -> list[float]:
    """Ratios of the steps: one for one-shot; for ``iterative`` remove ``step`` of what remains each time."""
    if config.schedule == "oneshot" or config.ratio == 0:
        return [config.ratio]
    if config.schedule == "auto-balanced":
        removed = [config.ratio * f for f in AUTO_BALANCED_ROUNDS]
        return [1.0 - (1.0 - r) / (1.0 - p) for p, r in zip([0.0] + removed[:-1], removed)]
    target, kept, ratios = 1.0 - config.ratio, 1.0, []
    while kept * (1.0 - config.step) > target + 1e-9:
        ratios.append(config.step)
        kept *= 1.0 - config.step
    ratios.append(1.0 - target / kept)
    return ratios


def _step_targets(original: Analysis, current: Analysis, removed_fraction: float) -> dict[int, int]:
    """Channels each current group keeps after removing ``removed_fraction`` of its ORIGINAL group's channels
    (groups are matched through the tensors they carry, whose names the rewrite keeps)."""
    targets = {}
    for g in current.groups:
        name = next((t for t in g.tensors if t in original.labels), None)
        if name is None:
            continue
        gid = int(original.unit_group[original.labels[name].atoms[0]])
        size = original.groups[gid].size
        targets[g.id] = kept_count(size, removed_fraction)
    return targets


def _compose(total: dict[str, np.ndarray], step: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Kept positions relative to the original, after one more step kept ``step`` of what was left."""
    out = dict(total)
    for name, kept in step.items():
        out[name] = total[name][kept] if name in total else kept
    return out


def _dropped_units(analysis: Analysis, keep: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """The units dropped from at least one of the listed tensors."""
    dropped: dict[int, set[int]] = {}
    for name, kept in keep.items():
        gids, local = analysis.unit_index(analysis.labels[name].atoms)
        gone = np.ones(len(gids), dtype=bool)
        gone[kept] = False
        for gid, unit in zip(gids[gone].tolist(), local[gone].tolist()):
            dropped.setdefault(gid, set()).add(unit)
    return {gid: np.array(sorted(units), dtype=np.int64) for gid, units in dropped.items()}


def _removed_units(analysis: Analysis, keep: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """The units each group lost, read back from the kept positions of its tensors."""
    present: dict[int, set[int]] = {}
    kept: dict[int, set[int]] = {}
    for name, lab in analysis.labels.items():
        gids, local = analysis.unit_index(lab.atoms)
        positions = keep.get(name)
        chosen = np.zeros(len(gids), dtype=bool)
        chosen[positions if positions is not None else slice(None)] = True
        for gid, unit, on in zip(gids.tolist(), local.tolist(), chosen.tolist()):
            present.setdefault(gid, set()).add(unit)
            if on:
                kept.setdefault(gid, set()).add(unit)
    return {gid: np.array(sorted(units - kept.get(gid, set())), dtype=np.int64)
            for gid, units in present.items() if units - kept.get(gid, set())}
