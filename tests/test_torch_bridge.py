"""The torch bridge: forward equal to onnxruntime, every float weight a named parameter, write-back into the
same initializers and Constant nodes with the graph untouched, clear errors for ops it cannot run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import needs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason=needs("torch"))

import builders  # noqa: E402
from conftest import EXAMPLE_MODEL, ROOT, random_feeds, run_ort  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.core.graph import light_model  # noqa: E402
from onnxprune.errors import UnsupportedError  # noqa: E402
from onnxprune.training.bridge import OnnxModule, unsupported_ops, write_back  # noqa: E402

BRIDGED = ["conv_bn_relu_chain", "residual_add", "bottleneck", "concat_branches", "depthwise_separable",
           "inverted_residual", "se_block", "grouped_conv", "depthwise_multiplier", "flatten_gemm_head", "mlp_head",
           "conv_transpose", "constant_node_weights", "shared_initializer", "split_channels", "conv1d", "conv3d",
           "prelu", "per_channel_affine", "pool_pad_resize", "reshape_gemm", "instance_norm", "output_only_conv",
           "dynamic_batch_chain", "layer_norm_channels_last", "channel_shuffle", "slice_channels",
           "gather_channels", "softmax_over_channels", "concat_graph_input", "concat_into_grouped_conv",
           "split_and_grouped_conv", "uneven_split", "lrn_block"]


def torch_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **kwargs) -> list[np.ndarray]:
    module = OnnxModule(model, **kwargs).eval()
    with torch.no_grad():
        return [o.numpy() for o in module(**{k: torch.from_numpy(v) for k, v in feeds.items()})]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(float(np.abs(w).max()), 1e-6)
        assert float(np.abs(g - w).max()) / scale <= tol


@pytest.mark.parametrize("name", BRIDGED)
def test_forward_matches_onnxruntime(name):
    model = getattr(builders, name)(seed=3)
    feeds = random_feeds(model, batch=2)
    assert_close(torch_outputs(model, feeds), run_ort(model, feeds))


@pytest.mark.parametrize("kind", ["encoder", "computed_shapes", "gqa", "vit_mnist_legacy"])
def test_forward_matches_onnxruntime_on_pruned_transformers(kind):
    """Pruned transformers hold what the rewrite writes: exact LayerNorms, copies of computed shapes' Concats, a
    ScatterElements on a computed shape entry that is not a constant (the legacy ViT's class-token Expand)."""
    model = {"encoder": lambda: builders.tiny_transformer(layers=2),
             "computed_shapes": lambda: builders.attention_block(heads=2, computed_shape=True)[0],
             "gqa": lambda: builders.attention_block(heads=4, kv_heads=2, computed_shape=True)[0],
             "vit_mnist_legacy": lambda: onnxprune.load(ROOT / "models" / "vit_mnist" / "vit_mnist.onnx")}[kind]()
    pruned = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5)).model
    ops = {n.op_type for n in pruned.graph.node}
    if kind == "vit_mnist_legacy":
        assert "ScatterElements" in ops
    elif kind != "encoder":
        assert any(n.op_type == "Concat" and n.name.endswith("_pruned") for n in pruned.graph.node)
    feeds = random_feeds(pruned, batch=1)
    assert_close(torch_outputs(pruned, feeds), run_ort(pruned, feeds))


def _contrib_block(op: str) -> onnx.ModelProto:
    """x[1,5,8] -> MatMul(8->8) = a -> op (com.microsoft) -> MatMul(->3) -> y."""
    b = builders.GraphBuilder(9)
    a = b.op("MatMul", ["x", b.const(b.randn(8, 8), "W")])
    width = 8
    if op == "Attention":
        out = b.op(op, [a, b.const(b.randn(8, 24), "Wqkv"), b.const(b.randn(24, scale=0.1), "Bqkv")],
                   domain="com.microsoft", num_heads=2)
    elif op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
        extra = [b.const(b.randn(8, scale=0.1), "beta")] if op == "SkipLayerNormalization" else []
        out = b.op(op, [a, "x", b.const(np.abs(b.randn(8)) + 0.5, "g"), *extra, b.const(b.randn(8), "bias")],
                   domain="com.microsoft", epsilon=1e-5)
    elif op == "BiasAdd":
        out = b.op(op, [a, b.const(b.randn(8), "bias"), "x"], domain="com.microsoft")
    else:
        bias = [b.const(b.randn(8), "bias")] if op in ("BiasGelu", "FastGelu") else []
        out = b.op(op, [a, *bias], domain="com.microsoft")
    y = b.op("MatMul", [out, b.const(b.randn(width, 3), "W")])
    model = b.model((1, 5, 8), y, (1, 5, 3), extra_opsets=[("com.microsoft", 1)])
    return model


@pytest.mark.parametrize("op", ["Gelu", "BiasGelu", "FastGelu", "QuickGelu", "SkipLayerNormalization",
                                "SkipSimplifiedLayerNormalization", "Attention"])
def test_contrib_ops_match_onnxruntime(op):  # BiasAdd: no onnxruntime CPU kernel to compare with
    model = _contrib_block(op)
    assert unsupported_ops(model) == []
    feeds = random_feeds(model, batch=1)
    assert_close(torch_outputs(model, feeds), run_ort(model, feeds))


def test_example_model_forward_and_parameters():
    model = onnx.load(EXAMPLE_MODEL)
    feeds = random_feeds(model, batch=4)
    assert_close(torch_outputs(model, feeds), run_ort(model, feeds))
    module = OnnxModule(model)
    names = dict(module.named_weights())
    float_inits = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                   and int(np.prod(t.dims)) > 1}
    assert set(names) == float_inits
    assert sum(p.numel() for p in module.parameters()) == sum(int(np.prod(model.graph.initializer[i].dims))
                                                              for i, t in enumerate(model.graph.initializer)
                                                              if t.name in float_inits)


def _perturbed(model: onnx.ModelProto, seed: int = 0) -> tuple[OnnxModule, onnx.ModelProto]:
    module = OnnxModule(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_weights():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module, write_back(model, module)


@pytest.mark.parametrize("name", ["conv_bn_relu_chain", "constant_node_weights", "shared_initializer", "se_block",
                                  "conv_transpose", "flatten_gemm_head"])
def test_write_back_keeps_the_graph_and_carries_the_values(name):
    model = getattr(builders, name)(seed=1)
    original_bytes = model.SerializeToString()
    module, trained = _perturbed(model)
    onnx.checker.check_model(trained, full_check=True)
    # identical graph: the structure without weights is byte for byte the same
    strip = lambda m: [(n.op_type, list(n.input), list(n.output), n.name) for n in m.graph.node]  # noqa: E731
    assert strip(trained) == strip(model)
    assert [(t.name, list(t.dims), t.data_type) for t in trained.graph.initializer] == \
        [(t.name, list(t.dims), t.data_type) for t in model.graph.initializer]
    assert light_model(trained).graph.input == light_model(model).graph.input
    assert trained.graph.output == model.graph.output
    feeds = random_feeds(model, batch=2)
    module.eval()
    with torch.no_grad():
        want = [o.numpy() for o in module(**{k: torch.from_numpy(v) for k, v in feeds.items()})]
    assert_close(run_ort(trained, feeds), want)
    assert not np.allclose(run_ort(trained, feeds)[0], run_ort(model, feeds)[0])
    assert model.SerializeToString() == original_bytes  # the input model is never modified


def test_constant_node_weights_are_parameters_and_written_back():
    model = builders.constant_node_weights(seed=2)
    module, trained = _perturbed(model)
    weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    assert weights and set(weights) <= constants and all(module.has_param(w) for w in weights)
    new = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in trained.graph.node
           if n.op_type == "Constant"}
    for name, p in module.named_weights():
        if name in new:
            np.testing.assert_array_equal(new[name], p.detach().numpy())


def test_batchnorm_running_statistics_train_and_write_back():
    model = builders.conv_bn_relu_chain(seed=0)
    module = OnnxModule(model, train_bn=True).train()
    x = torch.randn(8, 3, 8, 8) * 3 + 1
    module(x)
    trained = write_back(model, module)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in trained.graph.initializer}
    assert not np.allclose(before[bn.input[3]], after[bn.input[3]])  # running mean moved
    frozen = OnnxModule(model, train_bn=False).train()
    frozen(x)
    np.testing.assert_array_equal(frozen.weight(bn.input[3]).numpy(), before[bn.input[3]])


def test_unsupported_ops_are_named():
    model = builders.unsupported_op(seed=0)
    assert unsupported_ops(model) == ["CumSum"]
    with pytest.raises(UnsupportedError, match="CumSum"):
        OnnxModule(model)
    with pytest.raises(UnsupportedError, match="com.example.Mystery"):
        OnnxModule(builders.custom_domain_op(seed=0))


def test_gradients_reach_every_parameter():
    model = builders.bottleneck(seed=0)
    module = OnnxModule(model).train()
    out = module(torch.randn(4, 3, 8, 8))[0]
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in module.parameters())


blocks = st.lists(st.tuples(st.sampled_from(builders.BLOCKS), st.integers(2, 12)), min_size=1, max_size=4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=blocks, seed=st.integers(0, 2**16))
def test_random_architectures_forward_matches(arch, seed):
    model = builders.random_stack(arch, seed=seed)
    feeds = random_feeds(model, seed=seed, batch=2)
    assert_close(torch_outputs(model, feeds), run_ort(model, feeds))


def test_running_statistics_behind_identity_stay_buffers():
    """Legacy exports without constant folding read BatchNorm statistics through Identity nodes."""
    model = builders.conv_bn_relu_chain(seed=0)
    graph = model.graph
    bn = next(n for n in graph.node if n.op_type == "BatchNormalization")
    for k in (3, 4):
        src = bn.input[k]
        graph.node.insert(0, onnx.helper.make_node("Identity", [src], [src + "_id"]))
        bn.input[k] = src + "_id"
    module = OnnxModule(model, train_bn=True).train()
    assert not module.has_param(bn.input[3].removesuffix("_id"))
    module(torch.randn(4, 3, 8, 8))[0].sum().backward()
    trained = write_back(model, module)
    onnx.checker.check_model(trained, full_check=True)


@pytest.mark.parametrize("op", ["SimplifiedLayerNormalization", "RMSNormalization"])
def test_rms_norms_match_onnxruntime(op):
    """onnxruntime's SimplifiedLayerNormalization (default domain) and opset 23's RMSNormalization."""
    b = builders.GraphBuilder(26)
    a = b.op("MatMul", ["x", b.const(b.randn(6, 4), "W")])
    y = b.op(op, [a, b.const(b.rng.uniform(0.5, 1.5, 4).astype(np.float32), "s")], axis=-1, epsilon=1e-5)
    model = b.model((2, 5, 6), y, (2, 5, 4))
    if op == "RMSNormalization":
        model.opset_import[0].version, model.ir_version = 23, 10
    feeds = random_feeds(model, batch=2)
    assert_close(torch_outputs(model, feeds), run_ort(model, feeds))
