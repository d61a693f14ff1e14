"""Magnitude criteria read large weights a slice of rows at a time (onnxprune.planning.criteria.row_measure):
the very numbers converting the whole view to float64 gives, so the channels chosen do not change."""
from __future__ import annotations

import numpy as np
import pytest
from builders import bottleneck, tiny_transformer

import onnxprune
from onnxprune.analysis.dependency import WeightRef
from onnxprune.planning import criteria


def _plain(shape: tuple[int, ...], axis: int) -> WeightRef:
    def view(a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    return WeightRef("w", np.arange(shape[axis]), "in", 0, view, axis)


@pytest.mark.parametrize("shape,axis", [((64, 48, 3, 3), 0), ((64, 48, 3, 3), 1), ((300, 70), 1), ((300, 70), 0),
                                        ((5, 7, 9), 2), ((257, 3), 1), ((3, 257), 0), ((1025, 9), 0)])
@pytest.mark.parametrize("per_row", [criteria._l1, criteria._l2], ids=["l1", "l2"])
def test_row_measure_matches_the_whole_conversion_bit_for_bit(shape, axis, per_row, monkeypatch):
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = _plain(shape, axis)
    whole = per_row(ref.view(value).astype(np.float64, copy=False))  # as the criteria read views before
    for chunk in (16, 2048, 4100):  # one row a slice (made two), many slices with a partial last one
        monkeypatch.setattr(criteria, "_CHUNK_BYTES", chunk)
        assert np.array_equal(criteria.row_measure(ref, value, per_row), whole), chunk


@pytest.mark.parametrize("build", [bottleneck, lambda: tiny_transformer(layers=2)], ids=["conv", "transformer"])
def test_sliced_scores_choose_the_same_channels(build, monkeypatch):
    model = build()
    whole = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, verify=False)).removed
    monkeypatch.setattr(criteria, "_CHUNK_BYTES", 64)
    sliced = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, verify=False)).removed
    assert whole and sliced.keys() == whole.keys()
    assert all(np.array_equal(sliced[g], whole[g]) for g in whole)
