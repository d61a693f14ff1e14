"""Calibration: run the model in onnxruntime on sample data with the channel tensors exposed, and stream
per-channel statistics (memory stays flat in the number of samples)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.progress import Progress
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import Session, expose

__all__ = ["ChannelStats", "collect", "consumer_inputs", "model_batches", "static_batch"]


@dataclass
class ChannelStats:
    """Running sums for one tensor, one entry per position along its channel axis."""

    samples: int
    abs_mean: np.ndarray  # sum over samples of |spatial mean|  (DropNet's mean activation)
    zeros: np.ndarray  # count of exact zeros (APoZ)
    total: np.ndarray  # sum of values
    square: np.ndarray  # sum of squares
    elements: int  # values per channel seen

    @property
    def mean_activation(self) -> np.ndarray:
        return self.abs_mean / max(self.samples, 1)

    @property
    def apoz(self) -> np.ndarray:
        return self.zeros / max(self.elements, 1)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.elements, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.square / max(self.elements, 1) - self.mean ** 2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.square / max(self.elements, 1))


def consumer_inputs(analysis: Analysis) -> list[str]:
    """The tensors consumers (Conv, Gemm, MatMul) read channels from: post-activation maps."""
    names = []
    for ref in analysis.weights:
        if ref.role == "in":
            name = analysis.graph.nodes[ref.node].input[0]
            if name in analysis.labels and name not in names:
                names.append(name)
    return names


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed batch size of a model whose inputs pin it (``None`` when the batch is free)."""
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value
    return None


def model_batches(model: onnx.ModelProto, data: Dataset, batch_size: int, limit: int | None = None
                  ) -> Iterator[tuple[dict[str, np.ndarray], slice]]:
    """``data.batches`` sized for ``model``: a model that pins its batch size gets exactly that many samples a
    run, and the remainder it cannot take is left out."""
    fixed = static_batch(model)
    for feeds, part in data.batches(fixed or batch_size, limit):
        if fixed and part.stop - part.start != fixed:
            return
        yield feeds, part


def collect(model: onnx.ModelProto, tensors: list[str], axes: dict[str, int], data: Dataset,
            batch_size: int = 32, limit: int | None = None, label: str = "calibrating") -> dict[str, ChannelStats]:
    """Statistics of ``tensors`` (channel axis from ``axes``) over ``data``."""
    session = Session(model, edit=expose(tensors))
    stats: dict[str, ChannelStats] = {}
    n = len(data) if limit is None else min(limit, len(data))
    with Progress(label, n) as bar:
        for feeds, part in model_batches(model, data, batch_size, limit):
            values = session.run(feeds, tensors)
            for name, value in zip(tensors, values):
                _accumulate(stats, name, np.asarray(value), axes[name])
            bar.advance(part.stop - part.start)
    return stats


def _accumulate(stats: dict[str, ChannelStats], name: str, x: np.ndarray, axis: int) -> None:
    """Fold one batch into the running sums: views and float32 reductions, no copies of the batch."""
    if axis == 0 or x.ndim < 2:
        x = x.reshape(1, 1, x.shape[0], -1) if x.ndim else x.reshape(1, 1, 1, 1)
    else:
        x = x.reshape(x.shape[0], int(np.prod(x.shape[1:axis])), x.shape[axis], -1)  # [N, pre, C, post]
    n, pre, c, post = x.shape
    per_sample = x.mean(axis=(1, 3), dtype=np.float64)  # [N, C]
    square = np.einsum("npcq,npcq->c", x, x, dtype=np.float64) if x.dtype == np.float64 else \
        np.einsum("npcq,npcq->c", x, x).astype(np.float64)
    part = ChannelStats(n, np.abs(per_sample).sum(axis=0), np.count_nonzero(x == 0, axis=(0, 1, 3)),
                        per_sample.sum(axis=0) * (pre * post), square, n * pre * post)
    if name not in stats:
        stats[name] = part
        return
    s = stats[name]
    s.samples += part.samples
    s.abs_mean += part.abs_mean
    s.zeros += part.zeros
    s.total += part.total
    s.square += part.square
    s.elements += part.elements
