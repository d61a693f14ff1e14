"""``prune()``: analysis -> scores -> plan -> rewrite -> verification -> report, in one direction."""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np
import onnx

from onnxprune import __version__
from onnxprune.analysis.dependency import Analysis, analyze
from onnxprune.core.graph import Graph, light_model, static_input_shapes
from onnxprune.errors import PlanError, UsageError
from onnxprune.measure.calibrate import ChannelStats, collect, consumer_inputs
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate
from onnxprune.measure.runtime import check_provider
from onnxprune.measure.stats import group_rows, model_stats
from onnxprune.planning.budget import plan_for_budget
from onnxprune.planning.criteria import CRITERIA, DATA_CRITERIA, GRADIENT_CRITERIA, score
from onnxprune.planning.plan import Plan
from onnxprune.planning.planner import PlanConfig, choose
from onnxprune.rewriting.recover import RECOVERY_MODES, recover
from onnxprune.rewriting.rewrite import apply_keep
from onnxprune.rewriting.verify import Verification, verify
from onnxprune.tuning.latency import latency_ratio

__all__ = ["PruneConfig", "PruneResult", "prune", "prune_within", "prune_to_latency", "apply_plan", "model_sha256",
           "DEFAULT_DATA_CRITERION", "SCHEDULES", "TRAINING_SCHEDULES", "StepHooks"]

#: The criterion used when calibration data is given and none is named (see the issue notes for the measurement).
DEFAULT_DATA_CRITERION = "wanda"
SCHEDULES = ("oneshot", "iterative", "dropnet", "auto-balanced")
#: Schedules that train between steps (through the torch bridge): they need :class:`StepHooks`.
TRAINING_SCHEDULES = ("dropnet", "auto-balanced")
#: Cumulative fractions of the target removed by the rounds of ``auto-balanced`` (all layers abreast).
AUTO_BALANCED_ROUNDS = (0.5, 0.75, 1.0)


class StepHooks(Protocol):
    """Training between the steps of a schedule (see :mod:`onnxprune.training.schedules`)."""

    def before(self, step: int, model: onnx.ModelProto, analysis: Analysis, kept: dict[int, int]
               ) -> tuple[onnx.ModelProto, dict[int, np.ndarray] | None]:
        """Train ``model`` before a step that keeps ``kept[group id]`` channels; may return the scores."""

    def after(self, step: int, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """Train the pruned ``model``; ``None`` rejects the step and ends the schedule."""

    def report(self) -> dict:
        """What the training did, for the report."""


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a prune run (the CLI maps its flags onto these fields).

    ``criterion=None`` means ``l2``, or the default data-driven criterion when calibration data is given;
    ``recover=None`` means ``lstsq`` with calibration data and ``none`` without.
    """

    ratio: float = 0.5
    criterion: str | None = None
    global_ranking: bool = False
    round_to: int | str = 1  # or "auto": measured per group by measure_round_to()
    min_channels: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    verify: bool = True
    tolerance: float = 1e-4
    input_shapes: dict[str, list[int]] | None = None
    recover: str | None = None
    calib_samples: int | None = 512
    batch_size: int = 32
    schedule: str = "oneshot"
    step: float = 0.2
    target_macs: float | None = None
    target_params: float | None = None
    round_to_map: dict[int, int] | None = None  # per group id, overrides round_to (what "auto" measured)

    def plan_config(self, ratio: float | None = None) -> PlanConfig:
        if self.round_to == "auto" and self.round_to_map is None:
            raise UsageError("round_to='auto' is measured per model first: "
                             "config = config.measure_round_to(model)")
        return PlanConfig(self.ratio if ratio is None else ratio, self.global_ranking,
                          self.round_to if isinstance(self.round_to, int) else 1, self.min_channels,
                          self.round_to_map)

    def measure_round_to(self, model: onnx.ModelProto, *, provider: str = "CPUExecutionProvider",
                         threads: int = 1) -> "PruneConfig":
        """With ``round_to="auto"``: this config with ``round_to_map`` set to the multiple onnxruntime rewards
        per group of ``model`` (see :mod:`onnxprune.tuning.rounding`); otherwise this config unchanged."""
        if self.round_to != "auto" or self.round_to_map is not None:
            return self
        from onnxprune.tuning.rounding import auto_round_to
        analysis = analyze(Graph.build(model), self.exclude)
        found = auto_round_to(model, analysis, provider=provider, threads=threads, input_shapes=self.input_shapes)
        return replace(self, round_to_map=found.multiples)

    def resolved(self, calibrated: bool) -> tuple[str, str]:
        """(criterion, recovery) after defaults, checked against the data at hand."""
        training = self.schedule in TRAINING_SCHEDULES
        criterion = self.criterion or ({"dropnet": "mean-act", "auto-balanced": "l1"}.get(self.schedule) or
                                       (DEFAULT_DATA_CRITERION if calibrated else "l2"))
        recovery = self.recover or ("lstsq" if calibrated and not training else "none")
        if criterion not in CRITERIA:
            raise UsageError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
        if recovery not in RECOVERY_MODES:
            raise UsageError(f"unknown recovery '{recovery}' (choose from {', '.join(RECOVERY_MODES)})")
        if training and not calibrated:
            raise UsageError(f"the {self.schedule} schedule trains between steps: give training data (--data)")
        needs_data = criterion in DATA_CRITERIA + GRADIENT_CRITERIA
        if not calibrated and (needs_data or recovery != "none"):
            what = f"criterion '{criterion}'" if needs_data else f"--recover {recovery}"
            raise UsageError(f"{what} needs calibration data (--calib)")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})")
        if not 0.0 < self.step < 1.0:
            raise UsageError(f"--step must be in (0, 1), got {self.step}")
        targets = [t for t in (self.target_macs, self.target_params) if t is not None]
        if len(targets) > 1:
            raise UsageError("give one budget: --target-macs or --target-params")
        if targets and not 0.0 < targets[0] <= 1.0:
            raise UsageError(f"a budget is the fraction to keep, in (0, 1]; got {targets[0]}")
        if targets and self.schedule != "oneshot":
            raise UsageError("budgets (--target-macs/--target-params) work with the one-shot schedule")
        if self.batch_size < 1 or (self.calib_samples is not None and self.calib_samples < 1):
            raise UsageError("--batch-size and --calib-samples must be >= 1")
        if not (self.round_to == "auto" or (isinstance(self.round_to, int) and not isinstance(self.round_to, bool))):
            raise UsageError(f"--round-to must be a positive integer or 'auto', got {self.round_to!r}")
        replace(self, round_to_map=self.round_to_map or {}).plan_config().validate()
        return criterion, recovery


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
        h.update(t.raw_data if t.HasField("raw_data") else t.SerializeToString(deterministic=True))
    return h.hexdigest()


def prune(model: onnx.ModelProto, config: PruneConfig = PruneConfig(), *, calib: Dataset | None = None,
          eval_data: Dataset | None = None, source_sha256: str | None = None,
          hooks: StepHooks | None = None) -> PruneResult:
    """Prune ``model`` (never modified) and return the new model, its plan and a report.

    With ``calib`` the channels are scored on how the model behaves on those samples and the pruned model is
    repaired without training (``config.recover``); ``eval_data`` adds accuracy/fidelity before and after.
    ``hooks`` train the model between the steps of the ``dropnet`` and ``auto-balanced`` schedules.
    Raises :class:`~onnxprune.errors.UsageError` for bad options and
    :class:`~onnxprune.errors.VerificationError` when the result fails verification.
    """
    criterion, recovery = config.resolved(calib is not None)
    config = config.measure_round_to(model)  # round_to="auto": measured once per model, on the CPU
    if (config.schedule in TRAINING_SCHEDULES) != (hooks is not None):
        raise UsageError(f"the {config.schedule} schedule trains between steps: it needs training data (--data)"
                         if hooks is None else f"training hooks need a training schedule, not {config.schedule}")
    graph = Graph.build(model)
    analysis = analyze(graph, config.exclude)
    current, step_analysis = model, analysis
    total_keep: dict[str, np.ndarray] = {}
    steps = _schedule(config)
    for k, ratio in enumerate(steps):
        kept = None
        if k > 0 and not config.global_ranking:  # count from the original sizes: rounding never accumulates
            kept = _step_targets(analysis, step_analysis, 1.0 - float(np.prod([1 - r for r in steps[:k + 1]])))
        trained_scores = None
        if hooks is not None:
            targets = kept or {g.id: g.size - math.floor(ratio * g.size + 1e-9) for g in step_analysis.groups}
            trained, trained_scores = hooks.before(k, current, step_analysis, targets)
            if trained is not current:
                current, step_analysis = trained, analyze(Graph.build(trained), config.exclude)
        stats = _statistics(current, step_analysis, calib, config, criterion) if calib is not None else None
        scores = score(step_analysis, criterion, config.seed, stats)
        if criterion == "taylor" and recovery in ("bias", "lstsq"):  # recovery reads activation statistics
            stats = _statistics(current, step_analysis, calib, config, "mean-act")
        scores.update(trained_scores or {})
        if config.target_macs is not None or config.target_params is not None:
            kind, target = ("macs", config.target_macs) if config.target_macs is not None else \
                ("params", config.target_params)
            removed_now = plan_for_budget(current, step_analysis, scores, config.plan_config(ratio), kind, target,
                                          static_input_shapes(model, config.input_shapes))
        else:
            removed_now = choose(step_analysis, scores, config.plan_config(ratio), kept)
        keep = step_analysis.keep_positions(removed_now)
        if not keep:
            break
        pruned = apply_keep(step_analysis, keep)
        pruned = recover(current, pruned, step_analysis, keep, recovery, stats, calib, config.batch_size,
                         config.calib_samples, config.seed)
        if hooks is not None:
            pruned = hooks.after(k, pruned)
            if pruned is None:
                break
        current = pruned
        total_keep = _compose(total_keep, keep)
        if k + 1 < len(steps):
            step_analysis = analyze(Graph.build(current), config.exclude)
    total_keep = {n: v for n, v in total_keep.items() if n in analysis.labels}
    removed = _removed_units(analysis, total_keep)
    order = [o for node in graph.nodes for o in node.output]
    sha = source_sha256 if source_sha256 is not None else model_sha256(model)
    plan = Plan.from_keep(total_keep, analysis.labels, sha, order)
    verification = None
    if config.verify:
        verification = verify(model, current, plan, graph=graph, seed=config.seed,
                              input_shapes=config.input_shapes, tolerance=config.tolerance,
                              mask_check=recovery == "none" and hooks is None)
    shapes = static_input_shapes(model, config.input_shapes)
    before = model_stats(model, shapes)
    after = model_stats(current, shapes) if current is not model else before
    options = asdict(config)
    options.update(exclude=list(config.exclude), criterion=criterion, recover=recovery)
    report = {
        "tool": {"name": "onnxprune", "version": __version__},
        "model_sha256": sha,
        "options": options,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "macs_kept": after.macs / before.macs if before.macs else 1.0,
        "params_kept": after.params / before.params if before.params else 1.0,
        "groups": group_rows(analysis, removed, before.macs_per_node),
        "verification": verification.to_dict() if verification else None,
    }
    if hooks is not None:
        report["training"] = {**hooks.report(), "planned_steps": len(steps)}
    if eval_data is not None:
        limit = None
        report["evaluation"] = {
            "before": evaluate(model, eval_data, None, config.batch_size, limit, "evaluating original").to_dict(),
            "after": evaluate(current, eval_data, model, config.batch_size, limit, "evaluating pruned").to_dict(),
        }
    return PruneResult(current, plan, report, analysis, verification, removed)


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
        return (baseline.accuracy - e.accuracy) if labelled else (1.0 - e.agreement)

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
    chosen = max((t for t in tried if t["latency_ratio"] <= target), key=lambda t: t["target_macs"], default=None)
    macs = chosen["target_macs"] if chosen is not None else min(t["target_macs"] for t in tried)
    result = prune(model, replace(config, target_macs=macs, target_params=None), calib=calib, eval_data=eval_data,
                   source_sha256=source_sha256)
    final, ms_before, ms_after = latency_ratio(model, result.model, threads=threads, rounds=25,
                                               input_shapes=config.input_shapes, provider=provider)
    result.report["latency"] = {"target": target, "provider": provider, "threads": threads, "ratio": final,
                                "ms_original": ms_before, "ms_pruned": ms_after, "candidates": tried}
    return result


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
    for t in plan.tensors:
        lab = analysis.labels.get(t.name)
        if lab is None or lab.axis != t.axis or lab.size != t.size:
            raise PlanError(f"plan entry '{t.name}' (axis {t.axis}, size {t.size}) does not match the model")
    removed = _dropped_units(analysis, wanted)
    for gid in removed:
        group = analysis.groups[gid]
        if group.blocked:
            raise PlanError(f"the plan cuts group {gid}, which cannot be pruned: {group.blocked}")
        if group.cells is not None and len({int(np.isin(c, removed[gid]).sum()) for c in group.cells}) > 1:
            raise PlanError(f"the plan cuts group {gid} unevenly across its grouped-convolution groups")
        if len(removed[gid]) >= group.size:
            raise PlanError(f"the plan removes every channel of group {gid}")
    keep = analysis.keep_positions(removed)
    order = [o for node in graph.nodes for o in node.output]
    plan = Plan.from_keep(keep, analysis.labels, plan.model_sha256, order)  # the whole groups, as applied
    pruned = apply_keep(analysis, keep) if keep else model
    verification = verify(model, pruned, plan, graph=graph, seed=seed, input_shapes=input_shapes,
                          tolerance=tolerance) if verify_result else None
    shapes = static_input_shapes(model, input_shapes)
    before, after = model_stats(model, shapes), model_stats(pruned, shapes)
    report = {"tool": {"name": "onnxprune", "version": __version__}, "plan_model_sha256": plan.model_sha256,
              "before": before.to_dict(), "after": after.to_dict(),
              "macs_kept": after.macs / before.macs if before.macs else 1.0,
              "params_kept": after.params / before.params if before.params else 1.0,
              "groups": group_rows(analysis, removed, before.macs_per_node),
              "verification": verification.to_dict() if verification else None, "options": {"plan": True}}
    return PruneResult(pruned, plan, report, analysis, verification, removed)


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
        targets[g.id] = size - math.floor(removed_fraction * size + 1e-9)
    return targets


def _statistics(model: onnx.ModelProto, analysis: Analysis, data: Dataset, config: PruneConfig,
                criterion: str) -> dict[str, ChannelStats] | dict[str, np.ndarray]:
    names = consumer_inputs(analysis)
    if criterion == "taylor":
        from onnxprune.training.taylor import taylor_statistics
        return taylor_statistics(model, names, {n: analysis.labels[n].axis for n in names}, data,
                                 config.batch_size, config.calib_samples)
    return collect(model, names, {n: analysis.labels[n].axis for n in names}, data, config.batch_size,
                   config.calib_samples)


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
