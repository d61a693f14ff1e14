"""``prune()``: analysis -> scores -> plan -> rewrite -> verification -> report, in one direction."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from . import __version__
from .criteria import score
from .dependency import Analysis, analyze
from .graph import Graph, light_model
from .graph import static_input_shapes
from .plan import Plan
from .planner import PlanConfig, choose
from .report import group_rows, model_stats
from .rewrite import apply_keep
from .verify import Verification, verify

__all__ = ["PruneConfig", "PruneResult", "prune", "model_sha256"]


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a prune run (the CLI maps its flags onto these fields)."""

    ratio: float = 0.5
    criterion: str = "l2"
    global_ranking: bool = False
    round_to: int = 1
    min_channels: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    verify: bool = True
    tolerance: float = 1e-4
    input_shapes: dict[str, list[int]] | None = None

    def plan_config(self) -> PlanConfig:
        return PlanConfig(self.ratio, self.global_ranking, self.round_to, self.min_channels)


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


def prune(model: onnx.ModelProto, config: PruneConfig = PruneConfig(), *, source_sha256: str | None = None
          ) -> PruneResult:
    """Prune ``model`` (never modified) and return the new model, its plan and a report.

    Raises :class:`~onnxprune.errors.UsageError` for bad options and
    :class:`~onnxprune.errors.VerificationError` when the result fails verification.
    """
    plan_config = config.plan_config()
    plan_config.validate()
    graph = Graph.build(model)
    analysis = analyze(graph, config.exclude)
    scores = score(analysis, config.criterion, config.seed)
    removed = choose(analysis, scores, plan_config)
    keep = analysis.keep_positions(removed)
    pruned = apply_keep(analysis, keep) if keep else model
    order = [o for node in graph.nodes for o in node.output]
    sha = source_sha256 if source_sha256 is not None else model_sha256(model)
    plan = Plan.from_keep(keep, analysis.labels, sha, order)
    verification = None
    if config.verify:
        verification = verify(model, pruned, plan, graph=graph, seed=config.seed,
                              input_shapes=config.input_shapes, tolerance=config.tolerance)
    shapes = static_input_shapes(model, config.input_shapes)
    before = model_stats(model, shapes)
    after = model_stats(pruned, shapes) if keep else before
    options = asdict(config)
    options["exclude"] = list(config.exclude)
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
    return PruneResult(pruned, plan, report, analysis, verification, removed)
