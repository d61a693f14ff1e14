"""The options of a prune run (:class:`PruneConfig`), their defaults, and their validation."""
from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

import onnxprune.planning.obs  # noqa: F401 - registers obs, the default criterion with calibration data
from onnxprune.analysis.dependency import analyze
from onnxprune.core.graph import Graph, static_input_shapes
from onnxprune.errors import UsageError
from onnxprune.planning.criteria import get_criterion
from onnxprune.planning.planner import PlanConfig
from onnxprune.rewriting.recover import RECOVERY_MODES

__all__ = ["PruneConfig", "DEFAULT_DATA_CRITERION", "SCHEDULES", "TRAINING_SCHEDULES", "AUTO_BALANCED_ROUNDS"]

#: The criterion used when calibration data is given and none is named: structured OBS, the channels the
#: least-squares refit recovers best (issue 16: MNIST ResNet at --ratio 0.5 0.960 -> 0.967 beside wanda; ViT-MNIST
#: at 0.3 0.951 -> 0.959; LeNet-5 at 0.5 0.975 -> 0.982).
DEFAULT_DATA_CRITERION = "obs"
SCHEDULES = ("oneshot", "iterative", "dropnet", "auto-balanced")
#: Schedules that train between steps (through the torch bridge): they need :class:`StepHooks`.
TRAINING_SCHEDULES = ("dropnet", "auto-balanced")
#: The criterion a training schedule ranks by when none is named.
_SCHEDULE_CRITERIA = {"dropnet": "mean-act", "auto-balanced": "l1"}
#: Cumulative fractions of the target removed by the rounds of ``auto-balanced`` (all layers abreast).
AUTO_BALANCED_ROUNDS = (0.5, 0.75, 1.0)


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
    kind_ratios: dict[str, float] | None = None  # per group kind ("head", "hidden", "mlp", "channels")

    def plan_config(self, ratio: float | None = None) -> PlanConfig:
        if self.round_to == "auto" and self.round_to_map is None:
            raise UsageError("round_to='auto' is measured per model first: "
                             "config = config.measure_round_to(model)")
        return PlanConfig(self.ratio if ratio is None else ratio, self.global_ranking,
                          self.round_to if isinstance(self.round_to, int) else 1, self.min_channels,
                          self.round_to_map, self.kind_ratios)

    def measure_round_to(self, model: onnx.ModelProto, *, provider: str = "CPUExecutionProvider",
                         threads: int = 1) -> PruneConfig:
        """With ``round_to="auto"``: this config with ``round_to_map`` set to the multiple onnxruntime rewards
        per group of ``model`` (see :mod:`onnxprune.tuning.rounding`); otherwise this config unchanged.
        Every run calls it first, so ``input_shapes`` are checked against ``model``'s inputs here, before any work."""
        static_input_shapes(model, self.input_shapes)  # a UsageError for an unknown input or a pinned dim
        if self.round_to != "auto" or self.round_to_map is not None:
            return self
        from onnxprune.tuning.rounding import auto_round_to
        analysis = analyze(Graph.build(model), self.exclude)
        found = auto_round_to(model, analysis, provider=provider, threads=threads, input_shapes=self.input_shapes)
        return replace(self, round_to_map=found.multiples)

    @property
    def budget(self) -> tuple[str, float] | None:
        """``("macs", fraction)`` or ``("params", fraction)`` when a budget replaces ``ratio``."""
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        return None

    def resolved(self, calibrated: bool) -> tuple[str, str]:
        """(criterion, recovery) after defaults, checked against the data at hand."""
        training = self.schedule in TRAINING_SCHEDULES
        criterion = self.criterion or (_SCHEDULE_CRITERIA.get(self.schedule) or
                                       (DEFAULT_DATA_CRITERION if calibrated else "l2"))
        recovery = self.recover or ("lstsq" if calibrated and not training else "none")
        needs_data = get_criterion(criterion).data_driven
        if recovery not in RECOVERY_MODES:
            raise UsageError(f"unknown recovery '{recovery}' (choose from {', '.join(RECOVERY_MODES)})")
        if training and not calibrated:
            raise UsageError(f"the {self.schedule} schedule trains between steps: give training data (--data)")
        if not calibrated and (needs_data or recovery != "none"):
            what = f"criterion '{criterion}'" if needs_data else f"--recover {recovery}"
            raise UsageError(f"{what} needs calibration data (--calib)")
        self._check_schedule()
        self._check_budget()
        self._check_counts()
        return criterion, recovery

    def _check_schedule(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})")
        if not 0.0 < self.step < 1.0:
            raise UsageError(f"--step must be in (0, 1), got {self.step}")

    def _check_budget(self) -> None:
        targets = [t for t in (self.target_macs, self.target_params) if t is not None]
        if len(targets) > 1:
            raise UsageError("give one budget: --target-macs or --target-params")
        if targets and not 0.0 < targets[0] <= 1.0:
            raise UsageError(f"a budget is the fraction to keep, in (0, 1]; got {targets[0]}")
        if targets and self.schedule != "oneshot":
            raise UsageError("budgets (--target-macs/--target-params) work with the one-shot schedule")

    def _check_counts(self) -> None:
        if self.batch_size < 1 or (self.calib_samples is not None and self.calib_samples < 1):
            raise UsageError("--batch-size and --calib-samples must be >= 1")
        if not (self.round_to == "auto" or (isinstance(self.round_to, int) and not isinstance(self.round_to, bool))):
            raise UsageError(f"--round-to must be a positive integer or 'auto', got {self.round_to!r}")
        replace(self, round_to_map=self.round_to_map or {}).plan_config().validate()
