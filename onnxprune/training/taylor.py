"""The ``taylor`` criterion (Molchanov et al.): first-order Taylor estimate of the loss change when a channel is
removed, |Σ_positions activation · gradient| averaged over samples, through the torch bridge.

The loss is the cross-entropy against the labels where the data has them; without labels, against the model's
own top-1 predictions for class-score outputs, and half the squared output otherwise (the output energy a
channel carries).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.progress import Progress
from onnxprune.measure.calibrate import model_batches
from onnxprune.measure.data import Dataset
from onnxprune.planning.criteria import channel_criterion, register
from onnxprune.training.devices import require_torch

__all__ = ["TAYLOR", "taylor_statistics"]


def taylor_statistics(model: onnx.ModelProto, tensors: list[str], axes: dict[str, int], data: Dataset,
                      batch_size: int = 32, limit: int | None = None) -> dict[str, np.ndarray]:
    """Per-channel Taylor scores of ``tensors`` (channel axis from ``axes``) over ``data``."""
    torch = require_torch("the taylor criterion")
    from onnxprune.training.bridge import OnnxModule

    module = OnnxModule(model, train_bn=False).eval()
    F = torch.nn.functional
    sums: dict[str, np.ndarray | None] = {name: None for name in tensors}
    seen = 0
    n = len(data) if limit is None else min(limit, len(data))
    with Progress("measuring gradients", n) as bar:
        for feeds, part in model_batches(model, data, batch_size, limit):
            outputs, captured = module.run({k: torch.from_numpy(v) for k, v in feeds.items()}, capture=tensors)
            for value in captured.values():
                if value.requires_grad:
                    value.retain_grad()
            first = outputs[0]
            if data.labels is not None or (first.dim() == 2 and first.shape[1] > 1):
                target = torch.from_numpy(data.labels[part]) if data.labels is not None else \
                    first.detach().argmax(dim=1)
                loss = F.cross_entropy(first.reshape(first.shape[0], -1), target, reduction="sum")
            else:
                loss = sum(0.5 * o.pow(2).sum() for o in outputs if o.is_floating_point())
            module.zero_grad(set_to_none=True)
            loss.backward()
            for name, value in captured.items():
                if value.grad is None:
                    continue
                axis = axes[name] % value.dim()
                if axis == 0:
                    continue
                other = [d for d in range(1, value.dim()) if d != axis]
                contribution = value.detach() * value.grad
                per_sample = contribution.sum(dim=other) if other else contribution
                total = per_sample.abs().sum(dim=0).double().numpy()
                previous = sums[name]
                sums[name] = total if previous is None else previous + total
            seen += part.stop - part.start
            bar.advance(part.stop - part.start)
    return {name: value / max(seen, 1) for name, value in sums.items() if value is not None}


def _identity(scores: np.ndarray) -> np.ndarray:
    return scores


#: The registered ``taylor`` criterion: per-channel scores from :func:`taylor_statistics`.
TAYLOR = register(channel_criterion("taylor", _identity, needs="gradients", statistics=taylor_statistics))
