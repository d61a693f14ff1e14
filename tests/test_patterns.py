"""Every builder pattern: the groups analysis finds, and pruning that verifies (checker, onnxruntime, interface,
mask equivalence checked both by the library and by the independent oracle in conftest)."""
from __future__ import annotations

import math

import builders
import numpy as np
import onnx
import pytest
from conftest import assert_mask_equivalent, count_params, interface, random_feeds, run_ort, tensor_shapes

import onnxprune
from onnxprune.planning.plan import Plan, PlanTensor

OUT = "reaches graph output 'y'"

#: Expected groups in id order: (size, None if prunable else a substring of the blocked reason).
EXPECTED: dict[str, list[tuple[int, str | None]]] = {
    "conv_bn_relu_chain": [(8, None), (12, None), (4, OUT)],
    "residual_add": [(8, None), (6, None), (4, OUT)],
    "bottleneck": [(8, None), (4, None), (4, None), (16, None), (4, OUT)],
    "concat_branches": [(8, None), (6, None), (4, None), (4, OUT)],
    "depthwise_separable": [(8, None), (12, None), (4, OUT)],
    "inverted_residual": [(8, None), (16, None), (4, OUT)],
    "se_block": [(8, None), (4, None), (4, OUT)],
    "grouped_conv_g2": [(8, None), (8, None), (4, OUT)],
    "grouped_conv_g4": [(8, None), (8, None), (4, OUT)],
    "depthwise_multiplier": [(4, None), (4, OUT)],
    "flatten_gemm_head": [(8, None), (10, OUT)],
    "mlp_head": [(8, None), (16, None), (10, OUT)],
    "conv_transpose": [(8, None), (6, None), (4, OUT)],
    "constant_node_weights": [(8, None), (12, None), (4, OUT)],
    "shared_initializer": [(8, None), (8, None), (8, None), (4, OUT)],
    "split_channels": [(8, None), (6, None), (4, OUT)],
    "split_channels_equal": [(8, None), (6, None), (4, OUT)],
    "conv1d": [(8, None), (6, None), (4, OUT)],
    "conv3d": [(8, None), (6, None), (4, OUT)],
    "prelu": [(8, None), (4, OUT)],
    "per_channel_affine": [(8, None), (4, OUT)],
    "pool_pad_resize": [(8, None), (6, None), (5, None), (4, OUT)],
    "reshape_gemm": [(8, None), (10, OUT)],
    "reshape_gemm_infer": [(8, None), (10, OUT)],
    "instance_norm": [(8, None), (4, OUT)],
    "output_only_conv": [(8, OUT)],
    "unsupported_op": [(8, "unsupported op CumSum"), (6, None), (4, OUT)],
    "lrn_block": [(8, "LRN"), (6, None), (4, OUT)],
    "dynamic_batch_chain": [(8, None), (6, None), (4, OUT)],
    "layer_norm_channels_last": [(8, None), (16, None), (4, OUT)],
    "channel_shuffle": [(4, None), (4, OUT)],
    "slice_channels": [(8, None), (4, None), (4, None), (4, None), (4, OUT)],
    "gather_channels": [(8, None), (4, OUT)],
    "softmax_over_channels": [(8, None), (6, "Softmax"), (4, OUT)],
    "concat_graph_input": [(5, None), (3, "fixed channels from 'x'"), (6, None), (4, OUT)],
}
#: Groups that must be split into cells of equal keep-count: name -> {group id: (n_cells, cell size)}.
CELLS = {
    "grouped_conv_g2": {0: (2, 4), 1: (2, 4)},
    "grouped_conv_g4": {0: (4, 2), 1: (4, 2)},
    "split_channels_equal": {0: (2, 4)},  # an equal Split keeps its chunks equal
}
#: Patterns whose planner may give a channel back (a Split chunk must not vanish).
MAY_KEEP_MORE = {"split_channels"}

NAMES = sorted(builders.BUILDERS)


def test_expected_table_covers_every_builder():
    assert set(EXPECTED) == set(builders.BUILDERS)


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, build in builders.BUILDERS.items()}


# -- analysis -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_analysis_groups(models, name):
    analysis = onnxprune.analyze(models[name])
    got = [(g.size, g.blocked) for g in analysis.groups]
    want = EXPECTED[name]
    assert [s for s, _ in got] == [s for s, _ in want], got
    for (_, reason), (_, expected) in zip(got, want):
        if expected is None:
            assert reason is None
        else:
            assert reason is not None and expected in reason, (reason, expected)
    assert sum(g.prunable for g in analysis.groups) == sum(r is None for _, r in want)
    assert [g.id for g in analysis.groups] == list(range(len(analysis.groups)))
    for g in analysis.groups:
        assert g.sources, "every group has a creating node"
        assert g.tensors, "every group is carried by tensors"
        expect_cells = CELLS.get(name, {}).get(g.id)
        if expect_cells is None:
            assert g.cells is None
        else:
            assert g.cells is not None and g.cells.shape == expect_cells
            assert sorted(g.cells.ravel().tolist()) == list(range(g.size))


@pytest.mark.parametrize("name, sources", [
    ("residual_add", 2),  # conv1 + conv3 through the Add
    ("bottleneck", 2),  # conv3 + downsample
    ("inverted_residual", 2),  # stem + project
    ("se_block", 2),  # trunk conv + SE expand conv
    ("depthwise_separable", 1),  # the depthwise conv creates no channels
])
def test_tied_groups_have_all_their_sources(models, name, sources):
    analysis = onnxprune.analyze(models[name])
    first = analysis.groups[0] if name != "bottleneck" else analysis.groups[3]
    assert len(first.sources) == sources, first.sources
    assert all(isinstance(s, str) and s for s in first.sources)


def test_depthwise_group_spans_dw_conv(models):
    a = onnxprune.analyze(models["depthwise_separable"])
    g = a.groups[0]
    dw = next(n for n in models["depthwise_separable"].graph.node
              if n.op_type == "Conv" and any(x.name == "group" and x.i == 8 for x in n.attribute))
    assert dw.output[0] in g.tensors  # the depthwise output carries the stem's channels


def test_custom_domain_op_blocks_only_its_group():
    model = builders.custom_domain_op()
    analysis = onnxprune.analyze(model)
    reasons = [g.blocked for g in analysis.groups]
    assert "com.example.Mystery" in reasons[0]
    assert reasons[1] is None and analysis.groups[1].size == 6
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, verify=False))
    mystery = next(n for n in model.graph.node if n.op_type == "Mystery")
    planned = {t.name for t in result.plan.tensors}
    assert planned, "the supported group is still pruned"
    assert not planned & (set(mystery.input) | set(mystery.output))
    assert all(t.size == 6 and len(t.keep) == 3 for t in result.plan.tensors)


# -- pruning ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_prune_verifies(models, name, ratio):
    model = models[name]
    before_bytes = model.SerializeToString()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=ratio))
    pruned = result.model
    assert model.SerializeToString() == before_bytes, "the input model must not be modified"

    onnx.checker.check_model(pruned, full_check=True)
    assert interface(pruned) == interface(model)
    feeds = random_feeds(model)
    outs = run_ort(pruned, feeds)
    assert [o.shape for o in outs] == [o.shape for o in run_ort(model, feeds)]
    assert all(np.isfinite(o).all() for o in outs)

    v = result.verification
    assert v is not None  # it exists only when the checker, the run and the interface passed
    assert v.mask_equivalent is True
    assert v.max_rel_error <= 1e-4
    assert_mask_equivalent(model, pruned, result.plan)

    # Kept counts per group, as the planner promises.
    rows = {r["id"]: r for r in result.report["groups"]}
    analysis = result.analysis
    shrinks = False
    for g in analysis.groups:
        row = rows[g.id]
        assert row["size"] == g.size
        if not g.prunable:
            assert row["kept"] == g.size
            continue
        # within one channel (one per conv group for cells) of the exact fraction; a Split chunk may keep more
        exact = g.size * (1 - ratio)
        step = CELLS.get(name, {}).get(g.id, (1, 0))[0]
        assert row["kept"] % step == 0 and 1 <= row["kept"] <= g.size, (g.id, row)
        if name in MAY_KEEP_MORE:
            assert row["kept"] > exact - step, (g.id, row)
        else:
            assert abs(row["kept"] - exact) < step, (g.id, row)
        shrinks |= row["kept"] < g.size
    before, after = count_params(model), count_params(pruned)
    assert result.report["before"]["params"] == before
    assert result.report["after"]["params"] == after
    if shrinks:
        assert after < before
        assert result.report["after"]["macs"] < result.report["before"]["macs"]
        assert 0 < result.report["macs_kept"] < 1
        assert result.plan.tensors
    else:
        assert after == before
        assert not result.plan.tensors
    _check_plan(model, pruned, result.plan, analysis)


def _check_plan(model, pruned, plan, analysis):
    produced = [o for n in model.graph.node for o in n.output]
    assert [t.name for t in plan.tensors] == sorted((t.name for t in plan.tensors), key=produced.index), \
        "plan tensors follow the graph's node order"
    shapes_before = tensor_shapes(model)
    shapes_after = tensor_shapes(pruned)
    for t in plan.tensors:
        assert t.name in produced, f"{t.name} is not a node output of the original graph"
        keep = list(t.keep)
        assert keep == sorted(set(keep)), "keep is sorted and unique"
        assert 0 < len(keep) < t.size and 0 <= keep[0] and keep[-1] < t.size
        assert t.axis == analysis.labels[t.name].axis
        assert shapes_before[t.name][t.axis] == t.size
        if t.name in shapes_after:
            assert shapes_after[t.name][t.axis] == len(keep), t.name
    d = plan.to_dict()
    assert d["format"] == "onnxprune.plan/1"
    assert Plan.from_dict(d) == plan


@pytest.mark.parametrize("name", NAMES)
def test_ratio_zero_is_identity(models, name):
    model = models[name]
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.0))
    assert result.plan.tensors == ()
    assert result.plan.to_dict()["tensors"] == []
    feeds = random_feeds(model)
    for got, want in zip(run_ort(result.model, feeds), run_ort(model, feeds)):
        assert np.array_equal(got, want)
    assert count_params(result.model) == count_params(model)
    assert all(r["kept"] == r["size"] for r in result.report["groups"])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "layer_norm_channels_last"])
def test_graph_structure_preserved(models, name):
    """Only constants and attributes change: same nodes (names, ops, tensor names) in the same order, same
    opsets, IR version and producer."""
    model = models[name]
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    sig = lambda m: [(n.name, n.op_type, list(n.output),  # noqa: E731
                      [i for i in n.input if i not in {t.name for t in m.graph.initializer}]) for n in m.graph.node]
    before, after = sig(model), sig(pruned)
    assert before == after  # (weights may be renamed: a shared weight is split into copies)
    assert list(pruned.opset_import) == list(model.opset_import)
    assert (pruned.ir_version, pruned.producer_name) == (model.ir_version, model.producer_name)


def test_channels_last_layer_norm_is_expanded(models):
    """Pruned LayerNorm over the channels keeps dividing by the original width: it is written out in primitives."""
    model = models["layer_norm_channels_last"]
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    assert not _node(pruned, "LayerNormalization")
    assert _node(pruned, "ReduceSum") and _node(pruned, "Sqrt")
    assert {o.name for o in pruned.graph.output} == {"y"}


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    config = onnxprune.PruneConfig(ratio=0.5)
    a = onnxprune.prune(builders.BUILDERS[name](), config)
    b = onnxprune.prune(builders.BUILDERS[name](), config)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.plan.to_json() == b.plan.to_json()


# -- pattern-specific structure -----------------------------------------------------------------------------------
def _node(model, op_type, pred=lambda n: True):
    return [n for n in model.graph.node if n.op_type == op_type and pred(n)]


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _weights(model):
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            arrays[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return arrays


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_keeps_equal_counts_per_group(groups):
    model = builders.grouped_conv(groups=groups)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    gconv = _node(result.model, "Conv", lambda n: _attr(n, "group", 1) == groups)
    assert len(gconv) == 1
    w = _weights(result.model)[gconv[0].input[1]]
    assert w.shape[0] == 4 and w.shape[0] % groups == 0
    assert w.shape[1] * groups == 4  # input channels 8 -> 4, still spread over every group
    for t in result.plan.tensors:
        per_group = np.bincount(np.asarray(t.keep) // (t.size // groups), minlength=groups)
        assert np.all(per_group == per_group[0]), (t.name, t.keep)


def test_grouped_conv_random_criterion_still_balanced():
    for seed in range(5):
        result = onnxprune.prune(builders.grouped_conv(groups=2),
                                 onnxprune.PruneConfig(ratio=0.5, criterion="random", seed=seed))
        for t in result.plan.tensors:
            assert np.bincount(np.asarray(t.keep) // 4, minlength=2).tolist() == [2, 2]


def test_depthwise_multiplier_keeps_channel_pairs():
    model = builders.depthwise_multiplier()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    dw = _node(result.model, "Conv", lambda n: _attr(n, "group", 1) > 1)[0]
    assert _attr(dw, "group") == 2
    assert _weights(result.model)[dw.input[1]].shape[:2] == (4, 1)
    wide = [t for t in result.plan.tensors if t.size == 8]
    assert wide, "the depthwise output (8 channels) is in the plan"
    for t in wide:
        keep = np.asarray(t.keep)
        assert np.array_equal(keep[0::2] + 1, keep[1::2]) and np.all(keep[0::2] % 2 == 0)


def test_flatten_maps_one_channel_to_four_features():
    model = builders.flatten_gemm_head()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    flat = next(t for t in result.plan.tensors if t.size == 32)
    keep = np.asarray(flat.keep).reshape(-1, 4)
    assert np.all(keep[:, 0] % 4 == 0) and np.all(np.diff(keep, axis=1) == 1)
    gemm = _node(result.model, "Gemm")[0]
    assert _weights(result.model)[gemm.input[1]].shape == (10, 16)


def test_mlp_hidden_dim_pruned():
    result = onnxprune.prune(builders.mlp_head(), onnxprune.PruneConfig(ratio=0.5))
    g1, g2 = _node(result.model, "Gemm")
    w = _weights(result.model)
    assert w[g1.input[1]].shape == (8, 4)  # transB=1: [N, K]
    assert w[g1.input[2]].shape == (8,)
    assert w[g2.input[1]].shape == (8, 10)  # transB=0: [K, N]
    assert w[g2.input[2]].shape == (10,)


def test_conv_transpose_weight_axes():
    result = onnxprune.prune(builders.conv_transpose(), onnxprune.PruneConfig(ratio=0.5))
    ct = _node(result.model, "ConvTranspose")[0]
    w = _weights(result.model)
    assert w[ct.input[1]].shape == (4, 3, 2, 2)  # [C_in, C_out, k, k]
    assert w[ct.input[2]].shape == (3,)


def test_constant_nodes_are_sliced_in_place():
    model = builders.constant_node_weights()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert len(result.model.graph.initializer) == len(model.graph.initializer) == 0
    assert len(_node(result.model, "Constant")) == len(_node(model, "Constant"))
    convs = _node(result.model, "Conv")
    w = _weights(result.model)
    assert [w[c.input[1]].shape[:2] for c in convs] == [(4, 3), (6, 4), (4, 6)]


def test_shared_initializer_gets_one_copy_per_slice():
    model = builders.shared_initializer()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion="random", seed=3))
    a, b = _node(result.model, "Conv")[1:3]
    w = _weights(result.model)
    assert w[a.input[1]].shape == (4, 4, 3, 3) and w[b.input[1]].shape == (4, 4, 3, 3)
    shared_name = next(n for n in _weights(model) if n.startswith("W_shared"))
    original = _weights(model)[shared_name]
    # each conv reads the original weight sliced at its own kept rows/columns
    keep = result.plan.keep_map()
    for conv in (a, b):
        kin, kout = keep[conv.input[0]], keep[conv.output[0]]
        assert np.array_equal(w[conv.input[1]], original[kout][:, kin])


@pytest.mark.parametrize("explicit", [True, False])
def test_split_sizes_rewritten(explicit):
    model = builders.split_channels(explicit_sizes=explicit)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    split = _node(result.model, "Split")[0]
    assert len(split.input) == 2 and split.input[1]
    sizes = _weights(result.model).get(split.input[1])
    if sizes is None:
        sizes = onnx.numpy_helper.to_array(
            next(t for t in result.model.graph.initializer if t.name == split.input[1]))
    convs = _node(result.model, "Conv")
    w = _weights(result.model)
    assert sizes.tolist() == [w[convs[1].input[1]].shape[1], w[convs[2].input[1]].shape[1]]
    assert all(s >= 1 for s in sizes.tolist())
    assert sum(sizes.tolist()) == result.report["groups"][0]["kept"]
    if not explicit:
        assert sizes.tolist() == [2, 2]  # equal chunks stay equal


def test_reshape_shape_constant_follows_channels():
    result = onnxprune.prune(builders.reshape_gemm(shape=(1, 8)), onnxprune.PruneConfig(ratio=0.5))
    reshape = _node(result.model, "Reshape")[0]
    shape = onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                            if t.name == reshape.input[1]))
    assert shape.tolist() == [1, 4]


def test_resize_sizes_follow_channels():
    result = onnxprune.prune(builders.pool_pad_resize(), onnxprune.PruneConfig(ratio=0.5))
    resize = [n for n in _node(result.model, "Resize") if len(n.input) > 3 and n.input[3]][0]
    sizes = onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                            if t.name == resize.input[3]))
    assert sizes.tolist() == [1, 3, 12, 12]  # 5 channels at ratio 0.5 -> 3


def test_per_channel_constants_sliced():
    result = onnxprune.prune(builders.per_channel_affine(), onnxprune.PruneConfig(ratio=0.5))
    shapes = {tuple(t.dims) for t in result.model.graph.initializer}
    assert (1, 4, 1, 1) in shapes and (1, 8, 1, 1) not in shapes
    prelu = onnxprune.prune(builders.prelu(), onnxprune.PruneConfig(ratio=0.5))
    assert (4, 1, 1) in {tuple(t.dims) for t in prelu.model.graph.initializer}


def test_unsupported_op_group_left_intact():
    model = builders.unsupported_op()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    cumsum = _node(model, "CumSum")[0]
    planned = {t.name for t in result.plan.tensors}
    assert cumsum.input[0] not in planned and cumsum.output[0] not in planned
    first = _node(result.model, "Conv")[0]
    assert _weights(result.model)[first.input[1]].shape[0] == 8
    second = _node(result.model, "Conv")[1]
    assert _weights(result.model)[second.input[1]].shape[:2] == (3, 8)


def test_output_only_conv_changes_nothing():
    model = builders.output_only_conv()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.9))
    assert not result.plan.tensors
    assert result.model.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("name, before, after", [
    # conv: out elements x (C_in/g x k x k); ConvTranspose: in elements x (C_out/g x k x k); Gemm: M x N x K
    ("conv_bn_relu_chain", 8 * 64 * 27 + 12 * 64 * 72 + 4 * 64 * 108, 4 * 64 * 27 + 6 * 64 * 36 + 4 * 64 * 54),
    ("mlp_head", 8 * 64 * 27 + 8 * 16 + 16 * 10, 4 * 64 * 27 + 4 * 8 + 8 * 10),
    ("conv_transpose", 8 * 64 * 27 + 8 * 64 * 24 + 4 * 256 * 54, 4 * 64 * 27 + 4 * 64 * 12 + 4 * 256 * 27),
    ("grouped_conv_g2", 8 * 64 * 27 + 8 * 64 * 36 + 4 * 64 * 72, 4 * 64 * 27 + 4 * 64 * 18 + 4 * 64 * 36),
])
def test_report_macs_exact(name, before, after):
    result = onnxprune.prune(builders.BUILDERS[name](), onnxprune.PruneConfig(ratio=0.5))
    assert result.report["before"]["macs"] == before
    assert result.report["after"]["macs"] == after
    assert result.report["macs_kept"] == pytest.approx(after / before)


def test_report_group_params():
    """Group 0 of the chain: conv1 filters + bias + 4 BN vectors + conv2's input columns."""
    result = onnxprune.prune(builders.conv_bn_relu_chain(), onnxprune.PruneConfig(ratio=0.5))
    assert result.report["groups"][0]["params"] == 8 * 27 + 8 + 4 * 8 + 12 * 8 * 9


# -- options ------------------------------------------------------------------------------------------------------
def test_round_to_and_min_channels():
    model = builders.conv_bn_relu_chain()  # groups 8 and 12
    r = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.7, round_to=4))
    kept = [row["kept"] for row in r.report["groups"]]
    assert kept[:2] == [4, 4]  # 8*0.3=2.4 -> 3 -> round up 4; 12 -> 4 -> 4
    r = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.9, min_channels=5))
    assert [row["kept"] for row in r.report["groups"]][:2] == [5, 5]
    assert r.verification.mask_equivalent is True


def ranked_chain():
    """Channel c of every group is worth c + 1 (every weight has magnitude c + 1, random sign), so any magnitude
    criterion ranks the channels of a group in index order::

        x -> A: Conv(3->12) -> Relu -> B: Conv(12->10) -> Relu -> C: Conv(10->4) -> y
             group 12 (A's filters, B's columns)   group 10 (B's filters, C's columns)   blocked
    """
    b = builders.GraphBuilder(5)
    signs = lambda *shape: np.where(b.rng.random(shape) < 0.5, -1.0, 1.0)  # noqa: E731
    wa = signs(12, 3, 3, 3) * np.arange(1, 13).reshape(12, 1, 1, 1)
    wb = signs(10, 12, 3, 3) * np.arange(1, 13).reshape(1, 12, 1, 1) * np.arange(1, 11).reshape(10, 1, 1, 1)
    wc = signs(4, 10, 3, 3) * np.arange(1, 11).reshape(1, 10, 1, 1)
    h = b.relu(b.conv("x", 3, 12, bias=False, weight=b.const(wa.astype(np.float32), "W")))
    h = b.relu(b.conv(h, 12, 10, bias=False, weight=b.const(wb.astype(np.float32), "W")))
    return builders._finish(b, b.conv(h, 10, 4, bias=False, weight=b.const(wc.astype(np.float32), "W")))


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("ratio,round_to,min_channels", [
    (0.3, 1, 1), (0.5, 4, 1), (0.7, 4, 1), (0.5, 3, 1), (0.9, 1, 3), (0.9, 2, 5), (0.7, 4, 6),
])
def test_rounding_keeps_multiples_the_minimum_and_the_best_channels(criterion, ratio, round_to, min_channels):
    model = ranked_chain()
    config = onnxprune.PruneConfig(ratio=ratio, criterion=criterion, round_to=round_to, min_channels=min_channels)
    result = onnxprune.prune(model, config)
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    sources = {"A": next(t for t in result.plan.tensors if t.size == 12),
               "B": next(t for t in result.plan.tensors if t.size == 10)}
    for entry in sources.values():
        size, kept = entry.size, len(entry.keep)
        assert kept % round_to == 0 or kept == size, (entry, round_to)
        assert kept >= min(min_channels, size)
        exact = size * (1 - ratio)
        assert kept > exact - 1  # never cut more than asked
        assert kept < max(exact, min_channels) + round_to  # and rounded up by less than one multiple
        assert list(entry.keep) == list(range(size - kept, size))  # the best-ranked channels stay


def test_global_ranking_removes_the_global_fraction():
    model = builders.bottleneck()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, global_ranking=True))
    rows = [r for r in result.report["groups"] if not r["blocked"]]
    total = sum(r["size"] for r in rows)
    removed = sum(r["size"] - r["kept"] for r in rows)
    assert removed == math.floor(0.5 * total)
    assert all(r["kept"] >= 1 for r in rows)
    assert result.verification.mask_equivalent is True


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale", "random"])
def test_every_criterion_verifies(criterion):
    model = builders.bottleneck()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, criterion=criterion, seed=1))
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)


def test_l2_removes_the_weakest_filters():
    model = builders.conv_bn_relu_chain()
    conv = model.graph.node[0]
    inits = {t.name: t for t in model.graph.initializer}
    w = onnx.numpy_helper.to_array(inits[conv.input[1]]).copy()
    w[[1, 5]] *= 1e-3  # two nearly dead filters
    inits[conv.input[1]].CopyFrom(onnx.numpy_helper.from_array(w, conv.input[1]))
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.25))
    keep = result.plan.keep_map()[conv.output[0]]
    assert 1 not in keep and 5 not in keep and len(keep) == 6


def test_exclude_blocks_matching_group():
    model = builders.conv_bn_relu_chain()
    first = model.graph.node[0].name
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, exclude=(first,)))
    g0 = result.analysis.groups[0]
    assert g0.blocked is not None and "excluded" in g0.blocked and first in g0.blocked
    assert result.report["groups"][0]["kept"] == 8
    assert result.report["groups"][1]["kept"] == 6
    assert not any(t.name in g0.tensors for t in result.plan.tensors)


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), 1.5])
def test_bad_ratio_is_usage_error(ratio):
    with pytest.raises(onnxprune.UsageError):
        onnxprune.prune(builders.conv_bn_relu_chain(), onnxprune.PruneConfig(ratio=ratio))


def test_unknown_criterion_is_usage_error():
    with pytest.raises(onnxprune.UsageError, match="criterion"):
        onnxprune.prune(builders.conv_bn_relu_chain(), onnxprune.PruneConfig(criterion="taylor"))


# -- verify() -------------------------------------------------------------------------------------------------------
def test_verify_accepts_the_true_plan_and_rejects_a_wrong_one():
    model = builders.residual_add()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    v = onnxprune.verify(model, result.model, result.plan)
    assert v.mask_equivalent is True and v.max_rel_error <= 1e-4
    wrong = Plan(result.plan.model_sha256, tuple(
        PlanTensor(t.name, t.axis, t.size, tuple(sorted(set(range(t.size)) - set(t.keep)))[:len(t.keep)])
        for t in result.plan.tensors))
    with pytest.raises(onnxprune.VerificationError, match="mask-equivalent"):
        onnxprune.verify(model, result.model, wrong)


def test_verify_rejects_changed_interface():
    model = builders.conv_bn_relu_chain()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    broken.graph.output[0].name = "z"
    broken.graph.node[-1].output[0] = "z"
    with pytest.raises(onnxprune.VerificationError):
        onnxprune.verify(model, broken, result.plan)


def test_example_model_prunes_and_verifies():
    from conftest import EXAMPLE_MODEL

    model = onnxprune.load(EXAMPLE_MODEL)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    assert result.report["params_kept"] < 0.5
    assert sum(1 for g in result.analysis.groups if g.prunable) == 6


# -- regressions: bugs found while writing this suite, since fixed ---------------------------------------------
@pytest.mark.parametrize("widths, config", [
    ((2, 6), dict(ratio=0.5)),
    ((2, 6), dict(ratio=0.3, criterion="random", seed=4)),
    ((4, 4), dict(ratio=0.5)),
    ((4, 4), dict(ratio=0.5, global_ranking=True)),
])
def test_concat_into_grouped_conv(widths, config):
    """Was: a grouped-conv constraint spanning two groups (Concat -> grouped Conv) was attributed only to the group
    of its first channel; the other group was pruned unconstrained and the rewrite crashed in _slice_grouped_in
    (ValueError: cannot reshape array of size 5 into shape (2,newaxis))."""
    model = builders.concat_into_grouped_conv(widths=widths)
    result = onnxprune.prune(model, onnxprune.PruneConfig(**config))
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    concat = _node(model, "Concat")[0]
    keep = result.plan.keep_map().get(concat.output[0], np.arange(sum(widths)))
    counts = np.bincount(keep // (sum(widths) // 2), minlength=2)
    assert counts[0] == counts[1]  # each of the grouped conv's two groups keeps as many inputs


@pytest.mark.parametrize("config", [dict(ratio=0.75), dict(ratio=0.5, round_to=4), dict(ratio=0.9)])
def test_give_back_respects_grouped_conv_cells(config):
    """Was: the planner gave one channel back to a Split chunk that would vanish without respecting the group's
    cells: the grouped conv got unequal per-group counts and the rewrite crashed (ValueError: cannot reshape)."""
    model = builders.split_and_grouped_conv()
    result = onnxprune.prune(model, onnxprune.PruneConfig(**config))
    assert result.verification.mask_equivalent is True
    gconv = _node(result.model, "Conv", lambda n: _attr(n, "group", 1) == 2)[0]
    assert _weights(result.model)[gconv.input[1]].shape[1] * 2 == result.report["groups"][0]["kept"]
    split = _node(result.model, "Split")[0]
    sizes = onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                            if t.name == split.input[1]))
    assert sizes.min() >= 1


def test_uneven_split_chunk_never_vanishes():
    model = builders.uneven_split()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.75))
    assert result.verification.mask_equivalent is True
    split = _node(result.model, "Split")[0]
    sizes = onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                            if t.name == split.input[1]))
    assert sizes.tolist() == [1, 2]  # 8 * 0.25 = 2 kept, plus the best of the weak chunk given back
    assert_mask_equivalent(model, result.model, result.plan)


@pytest.mark.parametrize("round_to", [2, 4])
def test_round_to_survives_give_back(round_to):
    """Was: the channel given back to a vanishing Split chunk was added after rounding (kept 5 with round_to=4)."""
    result = onnxprune.prune(builders.uneven_split(), onnxprune.PruneConfig(ratio=0.5, round_to=round_to))
    assert result.report["groups"][0]["kept"] % round_to == 0
    assert result.verification.mask_equivalent is True


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_round_to_survives_give_back_with_cells(ratio):
    result = onnxprune.prune(builders.split_and_grouped_conv(), onnxprune.PruneConfig(ratio=ratio, round_to=4))
    assert result.verification.mask_equivalent is True
    assert result.report["groups"][0]["kept"] % 4 == 0
