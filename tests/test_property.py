"""Property: for random small architectures and random keep-sets, pruning verifies (mask equivalence), checked
by the library and by the independent oracle in conftest."""
from __future__ import annotations

import builders
import numpy as np
import onnx
from conftest import assert_mask_equivalent, count_params, interface, random_feeds, run_ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxprune

blocks = st.lists(st.tuples(st.sampled_from(builders.BLOCKS), st.integers(2, 12)), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=blocks,
       weights_seed=st.integers(0, 2**16),
       criterion=st.sampled_from(["random", "random", "l1", "l2", "bn-scale"]),
       ratio=st.sampled_from([0.0, 0.2, 0.34, 0.5, 0.75, 0.9]),
       seed=st.integers(0, 2**16),
       global_ranking=st.booleans(),
       round_to=st.sampled_from([1, 1, 2, 4]))
def test_random_architectures_prune_mask_equivalent(arch, weights_seed, criterion, ratio, seed, global_ranking,
                                                   round_to):
    model = builders.random_stack(arch, seed=weights_seed)
    config = onnxprune.PruneConfig(ratio=ratio, criterion=criterion, seed=seed, global_ranking=global_ranking,
                                   round_to=round_to)
    result = onnxprune.prune(model, config)
    v = result.verification
    assert v is not None and v.mask_equivalent is True and v.max_rel_error <= 1e-4
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(model)
    assert_mask_equivalent(model, result.model, result.plan)

    for t in result.plan.tensors:
        assert list(t.keep) == sorted(set(t.keep)) and 0 < len(t.keep) < t.size
    kept_all = all(r["kept"] == r["size"] for r in result.report["groups"])
    if ratio == 0 or kept_all:
        assert not result.plan.tensors
        feeds = random_feeds(model)
        for got, want in zip(run_ort(result.model, feeds), run_ort(model, feeds)):
            assert np.array_equal(got, want)
    else:
        assert count_params(result.model) < count_params(model)
    for row in result.report["groups"]:
        assert 1 <= row["kept"] <= row["size"]
        if row["blocked"]:
            assert row["kept"] == row["size"]
        elif round_to > 1 and row["kept"] < row["size"]:
            assert row["kept"] % round_to == 0 or row["kept"] < round_to


@settings(max_examples=10, deadline=None)
@given(arch=blocks, seed=st.integers(0, 2**16))
def test_random_architectures_deterministic(arch, seed):
    config = onnxprune.PruneConfig(ratio=0.5, criterion="random", seed=seed)
    a = onnxprune.prune(builders.random_stack(arch, seed=3), config)
    b = onnxprune.prune(builders.random_stack(arch, seed=3), config)
    assert a.model.SerializeToString() == b.model.SerializeToString()
