"""Evaluation: top-1 accuracy where labels exist, fidelity to a reference model otherwise (or as well)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxprune.core.progress import Progress
from onnxprune.measure.calibrate import model_batches
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import Session

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    samples: int
    accuracy: float | None = None  # top-1 against the labels
    agreement: float | None = None  # top-1 agreement with the reference
    cosine: float | None = None  # mean cosine similarity of the first output to the reference's
    rel_error: float | None = None  # ||out - ref|| / ||ref|| over all samples

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(model: onnx.ModelProto, data: Dataset, reference: onnx.ModelProto | None = None,
             batch_size: int = 64, limit: int | None = None, label: str = "evaluating") -> Evaluation:
    """Run ``model`` (and ``reference``) over ``data`` and compare their first outputs."""
    session = Session(model)
    ref = Session(reference) if reference is not None else None
    n = len(data) if limit is None else min(limit, len(data))
    seen = correct = agree = 0
    cos_sum = diff_sq = ref_sq = 0.0
    with Progress(label, n) as bar:
        for feeds, part in model_batches(model, data, batch_size, limit):
            out = np.asarray(session.run(feeds)[0], dtype=np.float64).reshape(part.stop - part.start, -1)
            seen += out.shape[0]
            if data.labels is not None:
                correct += int((out.argmax(axis=1) == data.labels[part]).sum())
            if ref is not None:
                want = np.asarray(ref.run(feeds)[0], dtype=np.float64).reshape(out.shape[0], -1)
                agree += int((out.argmax(axis=1) == want.argmax(axis=1)).sum())
                norms = np.linalg.norm(out, axis=1) * np.linalg.norm(want, axis=1)
                cos_sum += float(np.sum(np.where(norms > 0, (out * want).sum(axis=1) / np.maximum(norms, 1e-30),
                                                 1.0)))
                diff_sq += float(np.square(out - want).sum())
                ref_sq += float(np.square(want).sum())
            bar.advance(part.stop - part.start)
    if not seen:
        return Evaluation(0)
    return Evaluation(
        seen,
        accuracy=correct / seen if data.labels is not None else None,
        agreement=agree / seen if ref is not None else None,
        cosine=cos_sum / seen if ref is not None else None,
        rel_error=float(np.sqrt(diff_sq / ref_sq)) if ref is not None and ref_sq > 0 else None,
    )
