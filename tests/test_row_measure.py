"""Magnitude criteria read large weights without a float64 copy of each (onnxprune.planning.criteria.row_measure):
l2 by one einsum accumulating in float64 (the whole view's float64 sums to ~1e-16), other measures a slice of
rows at a time (the very numbers converting the whole view gives); the channels chosen do not change."""
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
def test_row_measure_matches_the_whole_conversion(shape, axis, per_row, monkeypatch):
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = _plain(shape, axis)
    whole = per_row(ref.view(value).astype(np.float64, copy=False))  # as the criteria read views before
    for chunk in (16, 2048, 4100):  # one row a slice (made two), many slices with a partial last one
        monkeypatch.setattr(criteria, "_CHUNK_BYTES", chunk)
        got = criteria.row_measure(ref, value, per_row)
        if per_row is criteria._l2:
            np.testing.assert_allclose(got, whole, rtol=1e-13)
        else:
            assert np.array_equal(got, whole), chunk


def test_l2_ties_stay_ties():
    """Rows holding the same values tie exactly, whatever their place in the weight."""
    row = np.random.default_rng(0).standard_normal(27).astype(np.float32).reshape(3, 3, 3)
    value = np.stack([row, row * 2, row, row])  # [4, 3, 3, 3]
    got = criteria.row_measure(_plain(value.shape, 0), value, criteria._l2)
    assert got[0] == got[2] == got[3] != got[1]


@pytest.mark.parametrize("build", [bottleneck, lambda: tiny_transformer(layers=2)], ids=["conv", "transformer"])
@pytest.mark.parametrize("criterion", ["l2", "l1"])
def test_scores_choose_the_channels_whole_views_choose(build, criterion, monkeypatch):
    model = build()
    config = onnxprune.PruneConfig(ratio=0.5, verify=False, criterion=criterion)
    monkeypatch.setattr(criteria, "_CHUNK_BYTES", 64)
    sliced = onnxprune.prune(model, config).removed
    monkeypatch.setattr(criteria, "row_measure",
                        lambda ref, value, per_row: per_row(ref.view(value).astype(np.float64, copy=False)))
    whole = onnxprune.prune(model, config).removed
    assert whole and sliced.keys() == whole.keys()
    assert all(np.array_equal(sliced[g], whole[g]) for g in whole)
