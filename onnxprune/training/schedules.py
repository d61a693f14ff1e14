"""Training schedules through the torch bridge: DropNet and Auto-Balanced Filter Pruning.

Both run inside :func:`onnxprune.pipeline.pruning.prune` as :class:`~onnxprune.pipeline.pruning.StepHooks`:

* **DropNet** — each step removes ``--step`` (p = 0.2) of the remaining channels of every group by mean
  activation on the training data, then fine-tunes; a step whose accuracy falls below κ·baseline gets one more
  round of fine-tuning, and if it is still below, it is undone and the schedule ends there.
* **Auto-balanced** — each round (50 %, 75 %, 100 % of the target, all layers abreast) first trains with the
  auto-balanced regulariser, which decays the filters to remove and stimulates those to keep (θ = the r-th
  largest filter L1 norm of the group; λ = 1 + ln(θ/M) below θ, −1 − ln(M/θ) above; τ rebalanced every step so
  the term is zero at the current weights), then removes the weakest filters by that norm and retrains.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.modelio import tensor_array
from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.evaluate import evaluate
from onnxprune.training.devices import require_torch
from onnxprune.training.finetune import FinetuneConfig, finetune, resolved_lr_schedule

__all__ = ["DropNet", "AutoBalanced", "training_hooks"]


def _metric(e: dict) -> float:
    """Accuracy where there are labels, else top-1 agreement with the original."""
    return e["accuracy"] if e["accuracy"] is not None else (e["agreement"] if e["agreement"] is not None else 0.0)


class _Trainer:
    """What both schedules share: the original as teacher, the data, and a record of every step."""

    def __init__(self, original: onnx.ModelProto, train: Dataset, eval_data: Dataset | None,
                 config: FinetuneConfig) -> None:
        self.original, self.train, self.eval_data = original, train, eval_data
        self.config = resolved_lr_schedule(config, repeated=True)
        self.steps: list[dict] = []
        self._measured: tuple[onnx.ModelProto, float] | None = None  # the last fine-tuned model and its metric
        self.baseline = self._evaluate(original)

    def _evaluate(self, model: onnx.ModelProto) -> float | None:
        if self.eval_data is None:
            return None
        if self._measured is not None and self._measured[0] is model:
            return self._measured[1]  # fine-tuning evaluated it already
        return _metric(evaluate(model, self.eval_data, self.original, self.config.batch_size,
                                self.config.eval_limit, "validating").to_dict())

    def _finetune(self, model: onnx.ModelProto, label: str, regularizer: Callable[[Any], Any] | None = None
                  ) -> onnx.ModelProto:
        result = finetune(model, self.train, self.config, teacher=self.original, eval_data=self.eval_data,
                          regularizer=regularizer, label=label)
        best = result.history[result.best_epoch]["eval"]
        self._measured = (result.model, _metric(best)) if best is not None else None
        return result.model

    def before(self, step: int, model: onnx.ModelProto, analysis: Analysis, kept: dict[int, int]
               ) -> tuple[onnx.ModelProto, dict[int, np.ndarray] | None]:
        return model, None

    def report(self) -> dict:
        return {"baseline": self.baseline, "steps": self.steps, "finetune": asdict(self.config)}


class DropNet(_Trainer):
    """Fine-tune after every step; stop when the metric falls below ``kappa`` × baseline."""

    def __init__(self, original: onnx.ModelProto, train: Dataset, eval_data: Dataset | None, config: FinetuneConfig,
                 kappa: float = 0.99) -> None:
        super().__init__(original, train, eval_data, config)
        if not 0.0 < kappa <= 1.0:
            raise UsageError(f"--kappa must be in (0, 1], got {kappa}")
        self.kappa = kappa

    def after(self, step: int, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """Fine-tune; a step short of the bar gets one more round of training (the network has not settled
        after the drop) before it is undone."""
        tuned = self._finetune(model, f"dropnet step {step + 1}")
        value = self._evaluate(tuned)
        retrained = False
        if not self._passes(value):
            tuned, retrained = self._finetune(tuned, f"dropnet step {step + 1} (again)"), True
            value = self._evaluate(tuned)
        accepted = self._passes(value)
        self.steps.append({"step": step + 1, "metric": value, "accepted": accepted, "retrained": retrained})
        return tuned if accepted else None

    def _passes(self, value: float | None) -> bool:
        return value is None or self.baseline is None or value >= self.kappa * self.baseline

    def report(self) -> dict:
        return {**super().report(), "schedule": "dropnet", "kappa": self.kappa}


class AutoBalanced(_Trainer):
    """Regularised training before each round, pruning by the regularised filter norms, retraining after."""

    def __init__(self, original: onnx.ModelProto, train: Dataset, eval_data: Dataset | None, config: FinetuneConfig,
                 alpha: float = 5e-3) -> None:
        super().__init__(original, train, eval_data, config)
        if not alpha > 0:
            raise UsageError(f"--alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def before(self, step: int, model: onnx.ModelProto, analysis: Analysis, kept: dict[int, int]
               ) -> tuple[onnx.ModelProto, dict[int, np.ndarray] | None]:
        regularizer = BalancedRegularizer(analysis, kept, self.alpha)
        trained = self._finetune(model, f"auto-balanced round {step + 1} (regularised)", regularizer)
        return trained, regularizer.scores(trained)

    def after(self, step: int, model: onnx.ModelProto) -> onnx.ModelProto:
        tuned = self._finetune(model, f"auto-balanced round {step + 1} (retraining)")
        self.steps.append({"step": step + 1, "metric": self._evaluate(tuned), "accepted": True})
        return tuned

    def report(self) -> dict:
        return {**super().report(), "schedule": "auto-balanced", "alpha": self.alpha}


class BalancedRegularizer:
    """The auto-balanced regulariser over the filters ("out" weight rows) of every group that loses channels."""

    def __init__(self, analysis: Analysis, kept: dict[int, int], alpha: float) -> None:
        self.alpha = alpha
        self.sizes = {g.id: g.size for g in analysis.groups if g.prunable and kept.get(g.id, g.size) < g.size}
        self.kept = {gid: max(1, kept[gid]) for gid in self.sizes}
        # group id -> [(tensor name, flat indices [rows, k], unit of each row)]
        self.rows: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for ref in analysis.weights:
            value = analysis.graph.const(ref.name)
            if ref.role != "out" or value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            flat = ref.view(np.arange(value.size).reshape(value.shape))
            gids, local = analysis.unit_index(ref.atoms)
            for gid in np.unique(gids).tolist():
                if gid in self.sizes:
                    mine = gids == gid
                    self.rows.setdefault(gid, []).append((ref.name, flat[mine], local[mine]))

    def __call__(self, module: Any) -> Any:
        torch = require_torch()
        total = None
        for gid, entries in self.rows.items():
            present = [(module.weight(name), idx, local) for name, idx, local in entries if module.has_param(name)]
            if not present:
                continue
            size, like = self.sizes[gid], present[0][0]
            sq = torch.zeros(size, dtype=like.dtype, device=like.device)
            l1 = torch.zeros(size, dtype=like.dtype, device=like.device)
            for weight, idx, local in present:
                rows = weight.reshape(-1)[torch.from_numpy(idx).to(weight.device)]
                unit = torch.from_numpy(local).to(weight.device)
                sq = sq.index_add(0, unit, rows.pow(2).sum(dim=1))
                l1 = l1.index_add(0, unit, rows.abs().sum(dim=1))
            lam, weak = _balance(torch, l1.detach(), self.kept[gid])
            weak_term = (lam * sq)[weak].sum()
            strong_term = (lam * sq)[~weak].sum()
            term = self.alpha * weak_term
            if float(strong_term.detach()) != 0.0:
                tau = -self.alpha * weak_term.detach() / strong_term.detach()
                term = term + tau * strong_term
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=next(module.parameters()).device)

    def scores(self, model: onnx.ModelProto) -> dict[int, np.ndarray]:
        """Per-unit filter L1 norms of ``model`` (the trained weights), for every group the regulariser saw.

        Groups without filters the regulariser could train are left to the default criterion (absent)."""
        values = {t.name: t for t in model.graph.initializer}
        out: dict[int, np.ndarray] = {}
        for gid, entries in self.rows.items():
            l1 = np.zeros(self.sizes[gid])
            for name, idx, local in entries:
                if name not in values:
                    continue
                w = tensor_array(values[name]).reshape(-1)
                np.add.at(l1, local, np.abs(w[idx]).sum(axis=1))
            if l1.any():
                out[gid] = l1
        return out


def _balance(torch: Any, norms: Any, keep: int) -> tuple[Any, Any]:
    """λ per unit and the mask of the weak units (norm below θ, the ``keep``-th largest norm)."""
    m = norms.clamp_min(1e-12)
    theta = torch.topk(m, keep).values[-1]
    weak = m < theta
    lam = torch.where(weak, 1.0 + torch.log(theta / m), -1.0 - torch.log(m / theta))
    return lam, weak


def training_hooks(schedule: str, original: onnx.ModelProto, train: Dataset | None, eval_data: Dataset | None,
                   config: FinetuneConfig, kappa: float = 0.99, alpha: float = 5e-3) -> DropNet | AutoBalanced | None:
    """The hooks of a training schedule, or ``None`` for the training-free ones."""
    if schedule not in ("dropnet", "auto-balanced"):
        return None
    if train is None:
        raise UsageError(f"the {schedule} schedule trains between steps: give training data (--data)")
    require_torch()
    if schedule == "dropnet":
        return DropNet(original, train, eval_data, config, kappa)
    return AutoBalanced(original, train, eval_data, config, alpha)
