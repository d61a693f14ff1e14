"""Tiny ONNX graphs, one builder per pruning pattern (float32, opset 17, seeded random weights).

Every builder returns an ``onnx.ModelProto`` whose graph input is ``x`` and whose graph output is ``y``
(unless said otherwise). Sizes are tiny (2-16 channels, 8x8 spatial) so that a prune + verification of one of
them takes a few milliseconds. Builders that end in a Conv/Gemm feeding ``y`` leave that last group blocked
("reaches graph output"), so the groups before it are the ones under test.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT = TensorProto.FLOAT


class GraphBuilder:
    """Accumulates nodes and initializers; names are deterministic (``<prefix><counter>``)."""

    def __init__(self, seed: int = 0, const_nodes: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.const_nodes = const_nodes  # hold weights in Constant nodes instead of initializers
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    # -- constants ---------------------------------------------------------------------------------------------
    def const(self, value: np.ndarray, prefix: str = "c", as_node: bool | None = None) -> str:
        name = self.name(prefix)
        value = np.asarray(value)
        if as_node if as_node is not None else self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_const",
                                               value=numpy_helper.from_array(value, name)))
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """An int64 initializer (shape tensors, axes, split sizes): always an initializer."""
        return self.const(np.array(values, dtype=np.int64), "i", as_node=False)

    def floats(self, values: Sequence[float]) -> str:
        return self.const(np.array(values, dtype=np.float32), "f", as_node=False)

    def randn(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # -- layers ------------------------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str | None = None,
           **attrs) -> str | list[str]:
        name = self.name(op_type.lower() + "_")
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        kw = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs, **kw))
        return outs if n_out > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             weight: str | None = None, dims: int = 2, stride: int = 1, **attrs) -> str:
        w = weight or self.const(self.randn(cout, cin // group, *([k] * dims)), "W")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.randn(cout, scale=0.1), "B"))
        return self.op("Conv", inputs, kernel_shape=[k] * dims, pads=[k // 2] * (2 * dims),
                       strides=[stride] * dims, group=group, **attrs)

    def bn(self, x: str, c: int) -> str:
        scale = self.const((self.rng.uniform(0.5, 1.5, c)).astype(np.float32), "bn_s")
        b = self.const(self.randn(c, scale=0.1), "bn_b")
        mean = self.const(self.randn(c, scale=0.1), "bn_m")
        var = self.const(self.rng.uniform(0.5, 2.0, c).astype(np.float32), "bn_v")
        return self.op("BatchNormalization", [x, scale, b, mean, var], epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def cbr(self, x: str, cin: int, cout: int, k: int = 3, **kw) -> str:
        return self.relu(self.bn(self.conv(x, cin, cout, k, **kw), cout))

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.floats(0.0), self.floats(6.0)])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1) -> str:
        w = self.const(self.randn(n, k) if trans_b else self.randn(k, n), "G")
        b = self.const(self.randn(n, scale=0.1), "Gb")
        return self.op("Gemm", [x, w, b], transB=trans_b)

    # -- model -------------------------------------------------------------------------------------------------
    def model(self, x_shape: Sequence[int | str], y: str, y_shape: Sequence[int | str] | None = None,
              extra_opsets: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
        producer = next(n for n in self.nodes if y in n.output)  # the graph output is named ``y``
        producer.output[list(producer.output).index(y)] = "y"
        graph = helper.make_graph(
            self.nodes, "tiny",
            [helper.make_tensor_value_info("x", FLOAT, list(x_shape))],
            [helper.make_tensor_value_info("y", FLOAT, list(y_shape) if y_shape is not None else None)],
            self.inits,
        )
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxprune-tests")
        model.ir_version = 8
        return model


def _finish(b: GraphBuilder, y: str, x_shape=(1, 3, 8, 8), extra_opsets=()) -> onnx.ModelProto:
    """Infer the output shape, declare it, and check the model."""
    probe = b.model(x_shape, y, None, extra_opsets)
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
    out = inferred.graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in out.type.tensor_type.shape.dim]
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", FLOAT, dims))
    if not extra_opsets:
        onnx.checker.check_model(probe, full_check=True)
    return probe


# ==============================================================================================================
# Builders
# ==============================================================================================================
def conv_bn_relu_chain(seed: int = 0) -> onnx.ModelProto:
    """Plain chain; the last conv feeds the graph output (blocked)::

        x[3] -> Conv(3->8) -> BN -> Relu -> Conv(8->12) -> BN -> Relu -> Conv(12->4) -> y
                \\____ group 8 ____/        \\_____ group 12 _____/         (blocked)
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 8)
    h = b.cbr(h, 8, 12)
    return _finish(b, b.conv(h, 12, 4))


def residual_add(seed: int = 0) -> onnx.ModelProto:
    """Residual block: the Add ties conv1's and conv3's filters into one group::

        x -> Conv1(3->8)+BN+Relu = a --------------------------+
                  a -> Conv2(8->6)+BN+Relu -> Conv3(6->8)+BN -> Add -> Relu -> Conv(8->4) -> y
        groups: {Conv1, Conv3} 8, {Conv2} 6, last conv blocked
    """
    b = GraphBuilder(seed)
    a = b.cbr("x", 3, 8)
    h = b.cbr(a, 8, 6)
    h = b.bn(b.conv(h, 6, 8), 8)
    h = b.relu(b.op("Add", [a, h]))
    return _finish(b, b.conv(h, 8, 4))


def bottleneck(seed: int = 0) -> onnx.ModelProto:
    """ResNet bottleneck with a strided 1x1 downsample shortcut::

        x -> stem Conv(3->8)+BN+Relu = s
             s -> Conv1x1(8->4) -> Conv3x3/2(4->4) -> Conv1x1(4->16)+BN --+
             s -> Conv1x1/2(8->16)+BN (downsample) ------------------------Add -> Relu -> Conv(16->4) -> y
        groups: stem 8, conv1 4, conv2 4, {conv3, downsample} 16, last blocked
    """
    b = GraphBuilder(seed)
    s = b.cbr("x", 3, 8)
    h = b.cbr(s, 8, 4, k=1)
    h = b.cbr(h, 4, 4, k=3, stride=2)
    h = b.bn(b.conv(h, 4, 16, k=1), 16)
    d = b.bn(b.conv(s, 8, 16, k=1, stride=2), 16)
    h = b.relu(b.op("Add", [h, d]))
    return _finish(b, b.conv(h, 16, 4))


def concat_branches(seed: int = 0) -> onnx.ModelProto:
    """Two branches joined on the channel axis (each input maps to a slice of the output)::

        x -> stem(3->8) -+-> ConvA(8->6)+Relu -+
                         +-> ConvB(8->4)+Relu -+-> Concat(axis=1, 10) -> Conv(10->4) -> y
        groups: stem 8, A 6, B 4, last blocked
    """
    b = GraphBuilder(seed)
    s = b.cbr("x", 3, 8)
    a = b.relu(b.conv(s, 8, 6))
    c = b.relu(b.conv(s, 8, 4, k=1))
    h = b.op("Concat", [a, c], axis=1)
    return _finish(b, b.conv(h, 10, 4))


def depthwise_separable(seed: int = 0) -> onnx.ModelProto:
    """Depthwise conv (group=C) ties its input and output channels; pointwise conv creates new ones::

        x -> Conv(3->8)+BN+Relu -> DWConv(8, group=8)+BN+Relu -> Conv1x1(8->12)+Relu -> Conv(12->4) -> y
             \\______________ group 8 (one source) ___________/   \\___ group 12 ___/     blocked
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 8)
    h = b.cbr(h, 8, 8, group=8)
    h = b.relu(b.conv(h, 8, 12, k=1))
    return _finish(b, b.conv(h, 12, 4))


def inverted_residual(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 block: 1x1 expand, depthwise, 1x1 project, residual Add::

        x -> stem(3->8) = s -> Conv1x1(8->16)+BN+Relu6 -> DW(16)+BN+Relu6 -> Conv1x1(16->8)+BN -> Add(s)
          -> Conv(8->4) -> y
        groups: {stem, project} 8, {expand (+dw)} 16, last blocked
    """
    b = GraphBuilder(seed)
    s = b.cbr("x", 3, 8)
    h = b.relu6(b.bn(b.conv(s, 8, 16, k=1), 16))
    h = b.relu6(b.bn(b.conv(h, 16, 16, group=16), 16))
    h = b.bn(b.conv(h, 16, 8, k=1), 8)
    h = b.op("Add", [s, h])
    return _finish(b, b.conv(h, 8, 4))


def se_block(seed: int = 0) -> onnx.ModelProto:
    """Squeeze-and-excitation: the gate's channels are tied to the trunk's by the Mul::

        x -> Conv(3->8)+Relu = t ------------------------------------------+
             t -> GAP -> Conv1x1(8->4)+Relu -> Conv1x1(4->8) -> Sigmoid -> Mul -> Conv(8->4) -> y
        groups: {trunk conv, SE expand conv} 8, {SE squeeze conv} 4, last blocked
    """
    b = GraphBuilder(seed)
    t = b.relu(b.conv("x", 3, 8))
    s = b.op("GlobalAveragePool", [t])
    s = b.relu(b.conv(s, 8, 4, k=1))
    s = b.op("Sigmoid", [b.conv(s, 4, 8, k=1)])
    h = b.op("Mul", [t, s])
    return _finish(b, b.conv(h, 8, 4))


def grouped_conv(seed: int = 0, groups: int = 2) -> onnx.ModelProto:
    """Grouped conv (not depthwise): kept channels must be spread equally over the conv's groups::

        x -> Conv(3->8)+Relu -> GConv(8->8, group=g)+BN+Relu -> Conv(8->4) -> y
             group 8, g cells     group 8, g cells              blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.cbr(h, 8, 8, group=groups)
    return _finish(b, b.conv(h, 8, 4))


def depthwise_multiplier(seed: int = 0) -> onnx.ModelProto:
    """Depthwise conv with channel multiplier 2: each input channel makes two output channels::

        x -> Conv(3->4)+Relu -> DWConv(4->8, group=4)+Relu -> Conv(8->4) -> y
             group 4 (its channels appear twice each after the DW conv)     blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 4))
    h = b.relu(b.conv(h, 4, 8, group=4))
    return _finish(b, b.conv(h, 8, 4))


def flatten_gemm_head(seed: int = 0) -> onnx.ModelProto:
    """Flatten of a 2x2 map: one channel maps to 4 consecutive Gemm input features::

        x -> Conv(3->8)+Relu -> MaxPool(4x4, stride 4) [1,8,2,2] -> Flatten [1,32] -> Gemm(32->10) -> y
             group 8 (x4 features)                                                     blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("MaxPool", [h], kernel_shape=[4, 4], strides=[4, 4])
    h = b.op("Flatten", [h], axis=1)
    return _finish(b, b.gemm(h, 32, 10))


def mlp_head(seed: int = 0) -> onnx.ModelProto:
    """GAP -> Flatten -> two Gemms: the hidden dimension is a prunable group::

        x -> Conv(3->8)+Relu -> GAP -> Flatten -> Gemm(8->16) -> Relu -> Gemm(16->10, transB=0) -> y
             group 8                              group 16               blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    h = b.relu(b.gemm(h, 8, 16))
    return _finish(b, b.gemm(h, 16, 10, trans_b=0))


def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose as consumer (weight axis 0) and producer (weight axis 1)::

        x -> Conv(3->8)+Relu -> ConvTranspose(8->6, stride 2)+Relu -> Conv(6->4) -> y   [1,4,16,16]
             group 8             group 6                                blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    w = b.const(b.randn(8, 6, 2, 2), "WT")
    bias = b.const(b.randn(6, scale=0.1), "BT")
    h = b.relu(b.op("ConvTranspose", [h, w, bias], kernel_shape=[2, 2], strides=[2, 2]))
    return _finish(b, b.conv(h, 6, 4))


def constant_node_weights(seed: int = 0) -> onnx.ModelProto:
    """The conv-bn-relu chain with every weight in a ``Constant`` node instead of an initializer::

        Constant(W1) Constant(B1) Constant(bn...)
              \\          |         /
        x -> Conv(3->8) -> BN -> Relu -> Conv(8->12) -> BN -> Relu -> Conv(12->4) -> y
    """
    b = GraphBuilder(seed, const_nodes=True)
    h = b.cbr("x", 3, 8)
    h = b.cbr(h, 8, 12)
    return _finish(b, b.conv(h, 12, 4))


def shared_initializer(seed: int = 0) -> onnx.ModelProto:
    """One weight initializer ``W_shared`` read by two convs (weight tying)::

        x -> Conv(3->8)+Relu -> ConvA(8->8, W_shared)+Relu -> ConvB(8->8, W_shared)+Relu -> Conv(8->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    shared = b.const(b.randn(8, 8, 3, 3, scale=0.2), "W_shared")
    h = b.relu(b.conv(h, 8, 8, weight=shared))
    h = b.relu(b.conv(h, 8, 8, weight=shared))
    return _finish(b, b.conv(h, 8, 4))


def split_channels(seed: int = 0, explicit_sizes: bool = True) -> onnx.ModelProto:
    """Split along channels into two convs whose outputs are added::

        x -> Conv(3->8)+Relu -> Split(axis=1, [3,5]) -+-> ConvA(3->6) -+
                                                      +-> ConvB(5->6) -+-> Add -> Relu -> Conv(6->4) -> y
        groups: stem 8 (split sizes rewritten), {A, B} 6, last blocked
    With ``explicit_sizes=False`` the Split has no ``split`` input (equal halves [4,4]).
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    sizes = [3, 5] if explicit_sizes else [4, 4]
    inputs = [h, b.ints(sizes)] if explicit_sizes else [h]
    p, q = b.op("Split", inputs, n_out=2, axis=1)
    h = b.relu(b.op("Add", [b.conv(p, sizes[0], 6), b.conv(q, sizes[1], 6)]))
    return _finish(b, b.conv(h, 6, 4))


def conv1d(seed: int = 0) -> onnx.ModelProto:
    """1-D conv chain::

        x[1,3,16] -> Conv1d(3->8)+BN+Relu -> Conv1d(8->6)+BN+Relu -> Conv1d(6->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 8, dims=1)
    h = b.cbr(h, 8, 6, dims=1)
    return _finish(b, b.conv(h, 6, 4, dims=1), x_shape=(1, 3, 16))


def conv3d(seed: int = 0) -> onnx.ModelProto:
    """3-D conv chain::

        x[1,3,4,4,4] -> Conv3d(3->8)+BN+Relu -> Conv3d(8->6)+BN+Relu -> Conv3d(6->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 8, dims=3)
    h = b.cbr(h, 8, 6, dims=3)
    return _finish(b, b.conv(h, 6, 4, dims=3), x_shape=(1, 3, 4, 4, 4))


def prelu(seed: int = 0) -> onnx.ModelProto:
    """PRelu with one slope per channel (slope shape [C,1,1])::

        x -> Conv(3->8) -> PRelu(slope[8,1,1]) -> Conv(8->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.conv("x", 3, 8)
    slope = b.const(b.rng.uniform(0.05, 0.5, (8, 1, 1)).astype(np.float32), "slope")
    h = b.op("PRelu", [h, slope])
    return _finish(b, b.conv(h, 8, 4))


def per_channel_affine(seed: int = 0) -> onnx.ModelProto:
    """Per-channel Mul and Add constants of shape [1,C,1,1] (and a scalar Mul, which passes)::

        x -> Conv(3->8) -> Mul(s[1,8,1,1]) -> Add(t[1,8,1,1]) -> Mul(2.0) -> Relu -> Conv(8->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.conv("x", 3, 8)
    h = b.op("Mul", [h, b.const(b.rng.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32), "scale")])
    h = b.op("Add", [h, b.const(b.randn(1, 8, 1, 1), "shift")])
    h = b.relu(b.op("Mul", [h, b.floats(2.0)]))
    return _finish(b, b.conv(h, 8, 4))


def pool_pad_resize(seed: int = 0) -> onnx.ModelProto:
    """Channel-preserving spatial ops between convs::

        x -> Conv(3->8)+Relu -> MaxPool(2) [4x4] -> Pad(1) [6x6] -> Conv(8->6)+Relu -> AveragePool(2) [3x3]
          -> Resize(scales 1,1,2,2) [6x6] -> Conv(6->5)+Relu -> Resize(sizes 1,5,12,12) -> Conv(5->4) -> y
        groups: 8, 6, 5 (the Resize ``sizes`` input follows the channels), last blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Pad", [h, b.ints([0, 0, 1, 1, 0, 0, 1, 1])], mode="constant")
    h = b.relu(b.conv(h, 8, 6))
    h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Resize", [h, "", b.floats([1, 1, 2, 2])], mode="nearest")
    h = b.relu(b.conv(h, 6, 5))
    h = b.op("Resize", [h, "", "", b.ints([1, 5, 12, 12])], mode="nearest")
    return _finish(b, b.conv(h, 5, 4))


def reshape_gemm(seed: int = 0, shape: Sequence[int] = (1, 8)) -> onnx.ModelProto:
    """Reshape [N,C,1,1] -> [N,C] before a Gemm (the Reshape's shape constant follows the channels)::

        x -> Conv(3->8)+Relu -> GAP [1,8,1,1] -> Reshape(shape) [1,8] -> Gemm(8->10) -> y
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("Reshape", [b.op("GlobalAveragePool", [h]), b.ints(shape)])
    return _finish(b, b.gemm(h, 8, 10))


def instance_norm(seed: int = 0) -> onnx.ModelProto:
    """InstanceNormalization's scale and bias follow the channels::

        x -> Conv(3->8) -> InstanceNorm(scale[8], B[8]) -> Relu -> Conv(8->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.conv("x", 3, 8)
    scale = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "in_s")
    bias = b.const(b.randn(8, scale=0.1), "in_b")
    h = b.relu(b.op("InstanceNormalization", [h, scale, bias], epsilon=1e-5))
    return _finish(b, b.conv(h, 8, 4))


def output_only_conv(seed: int = 0) -> onnx.ModelProto:
    """The only conv's output is the graph output: the single group is blocked, nothing can be pruned::

        x -> Conv(3->8) -> y
    """
    b = GraphBuilder(seed)
    return _finish(b, b.conv("x", 3, 8))


def unsupported_op(seed: int = 0) -> onnx.ModelProto:
    """An op without a handler (CumSum) blocks the group it reads; the rest is still pruned::

        x -> Conv1(3->8)+Relu -> CumSum(axis=3) -> Conv2(8->6)+Relu -> Conv3(6->4) -> y
             group 8: BLOCKED (CumSum)            group 6: prunable    blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("CumSum", [h, b.const(np.array(3, dtype=np.int64), "axis", as_node=False)])
    h = b.relu(b.conv(h, 8, 6))
    return _finish(b, b.conv(h, 6, 4))


def lrn_block(seed: int = 0) -> onnx.ModelProto:
    """LRN mixes neighbouring channels, so it blocks the group it normalises::

        x -> Conv1(3->8)+Relu -> LRN(size 3) -> Conv2(8->6)+Relu -> Conv3(6->4) -> y
             group 8: BLOCKED (LRN)              group 6: prunable    blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("LRN", [h], size=3)
    h = b.relu(b.conv(h, 8, 6))
    return _finish(b, b.conv(h, 6, 4))


def custom_domain_op(seed: int = 0) -> onnx.ModelProto:
    """A custom-domain op (onnxruntime cannot run it) in the middle: analysis only::

        x -> Conv1(3->8)+Relu -> com.example.Mystery -> Conv2(8->6)+Relu -> Conv3(6->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("Mystery", [h], domain="com.example")
    h = b.relu(b.conv(h, 8, 6))
    b.nodes.append(helper.make_node("Conv", [h, b.const(b.randn(4, 6, 3, 3), "W")], ["y"], name="last_conv",
                                    kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(b.nodes, "tiny", [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, 4, 8, 8])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def dynamic_batch_chain(seed: int = 0) -> onnx.ModelProto:
    """The conv-bn-relu chain with a symbolic batch dimension ``N``::

        x[N,3,8,8] -> Conv(3->8)+BN+Relu -> Conv(8->6)+BN+Relu -> Conv(6->4) -> y[N,4,8,8]
    """
    b = GraphBuilder(seed)
    h = b.cbr("x", 3, 8)
    h = b.cbr(h, 8, 6)
    return _finish(b, b.conv(h, 6, 4), x_shape=("N", 3, 8, 8))


def layer_norm_channels_last(seed: int = 0) -> onnx.ModelProto:
    """ConvNeXt block: channels-last LayerNorm over the channel axis, MLP by MatMul, layer scale, residual::

        x -> Conv(3->8) = s -> DW(8) -> Transpose(NHWC) -> LayerNorm(axis=-1) -> MatMul(8->16)+b -> Relu
          -> MatMul(16->8) -> Mul(gamma[8]) -> Transpose(NCHW) -> Add(s) -> Conv(8->4) -> y
        groups: {stem, MatMul2} 8 (LayerNorm rewritten to keep dividing by 8), {MatMul1} 16, last blocked
    """
    b = GraphBuilder(seed)
    s = b.conv("x", 3, 8)
    h = b.op("Transpose", [b.conv(s, 8, 8, group=8)], perm=[0, 2, 3, 1])
    h = b.op("LayerNormalization", [h, b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "ln_s"),
                                    b.const(b.randn(8, scale=0.1), "ln_b")], axis=-1, epsilon=1e-6)
    h = b.relu(b.op("Add", [b.op("MatMul", [h, b.const(b.randn(8, 16), "M")]), b.const(b.randn(16), "Mb")]))
    h = b.op("MatMul", [h, b.const(b.randn(16, 8), "M")])
    h = b.op("Mul", [h, b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma")])
    h = b.op("Add", [s, b.op("Transpose", [h], perm=[0, 3, 1, 2])])
    return _finish(b, b.conv(h, 8, 4))


def channel_shuffle(seed: int = 0) -> onnx.ModelProto:
    """ShuffleNet channel shuffle: Reshape [1,8,..] -> [1,2,4,..], Transpose, Reshape back::

        x -> Conv(3->8)+Relu -> Reshape[1,2,4,8,8] -> Transpose(0,2,1,3,4) -> Reshape[1,8,8,8] -> Conv(8->4) -> y
        group: 4 units (channel c and c+4 are removed together), last blocked
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("Reshape", [h, b.ints([1, 2, 4, 8, 8])])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.ints([1, 8, 8, 8])])
    return _finish(b, b.conv(h, 8, 4))


def slice_channels(seed: int = 0) -> onnx.ModelProto:
    """Slices on the channel axis (a window, a negative start, a prefix) feeding three convs::

        x -> Conv(3->8)+Relu = h -> h[:, 2:6], h[:, -3:], h[:, :2] -> Conv each -> Concat(12) -> Conv(12->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    p = b.op("Slice", [h, b.ints([2]), b.ints([6]), b.ints([1])])
    q = b.op("Slice", [h, b.ints([-3]), b.ints([1 << 62]), b.ints([1])])
    r = b.op("Slice", [h, b.ints([0]), b.ints([2]), b.ints([1])])
    h = b.op("Concat", [b.conv(p, 4, 4), b.conv(q, 3, 4), b.conv(r, 2, 4)], axis=1)
    return _finish(b, b.conv(h, 12, 4))


def gather_channels(seed: int = 0) -> onnx.ModelProto:
    """Gather on the channel axis with constant indices (reordered, one repeated)::

        x -> Conv(3->8)+Relu -> Gather(axis=1, [7,0,3,3,5]) -> Conv(5->4) -> y
    """
    b = GraphBuilder(seed)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("Gather", [h, b.ints([7, 0, 3, 3, 5])], axis=1)
    return _finish(b, b.conv(h, 5, 4))


def softmax_over_channels(seed: int = 0) -> onnx.ModelProto:
    """Softmax over the spatial axis passes; Softmax over the channel axis blocks::

        x -> Conv(3->8) -> Softmax(axis=3) -> Conv(8->6) -> Softmax(axis=1) -> Conv(6->4) -> y
             group 8                          group 6: BLOCKED
    """
    b = GraphBuilder(seed)
    h = b.op("Softmax", [b.conv("x", 3, 8)], axis=3)
    h = b.op("Softmax", [b.conv(h, 8, 6)], axis=1)
    return _finish(b, b.conv(h, 6, 4))


def concat_graph_input(seed: int = 0) -> onnx.ModelProto:
    """A Concat of a conv output with the graph input: the input's channels are fixed::

        x[3] -> Conv(3->5)+Relu -+-> Concat(8) -> Conv(8->6)+Relu -> Conv(6->4) -> y
        x -----------------------+
        groups: conv 5 (prunable), x's 3 (BLOCKED: fixed channels), 6, last blocked
    """
    b = GraphBuilder(seed)
    h = b.op("Concat", [b.relu(b.conv("x", 3, 5)), "x"], axis=1)
    h = b.relu(b.conv(h, 8, 6))
    return _finish(b, b.conv(h, 6, 4))


def concat_into_grouped_conv(seed: int = 0, widths: tuple[int, int] = (2, 6)) -> onnx.ModelProto:
    """A Concat of two groups read by a grouped conv: each conv group sees channels of both groups::

        x -+-> ConvA(3->2)+Relu -+
           +-> ConvB(3->6)+Relu -+-> Concat [2|6] -> GConv(8->8, group=2)+Relu -> Conv(8->4) -> y
        conv groups: {A0, A1, B0, B1} and {B2..B5}
    """
    b = GraphBuilder(seed)
    p = b.relu(b.conv("x", 3, widths[0]))
    q = b.relu(b.conv("x", 3, widths[1]))
    h = b.op("Concat", [p, q], axis=1)
    h = b.relu(b.conv(h, sum(widths), 8, group=2))
    return _finish(b, b.conv(h, 8, 4))


def split_and_grouped_conv(seed: int = 0) -> onnx.ModelProto:
    """One group read both through an uneven Split and by a grouped conv (cells [0..3], [4..7]); filters 0 and 1
    are nearly dead, so a strong cut removes the whole first Split chunk::

        x -> Conv(3->8)+Relu = h -> Split [2|6] -> Conv(2->4), Conv(6->4) -> Add = a
                                h -> GConv(8->4, group=2) = g
        Add(a, g) -> Relu -> Conv(4->4) -> y
    """
    b = GraphBuilder(seed)
    w = b.randn(8, 3, 3, 3)
    w[:2] *= 1e-3
    h = b.relu(b.conv("x", 3, 8, weight=b.const(w, "W")))
    s1, s2 = b.op("Split", [h, b.ints([2, 6])], n_out=2, axis=1)
    a = b.op("Add", [b.conv(s1, 2, 4), b.conv(s2, 6, 4)])
    g = b.conv(h, 8, 4, group=2)
    return _finish(b, b.conv(b.relu(b.op("Add", [a, g])), 4, 4))


def uneven_split(seed: int = 0) -> onnx.ModelProto:
    """An uneven Split whose small chunk holds the two weakest filters::

        x -> Conv(3->8, filters 0,1 ~ 0)+Relu -> Split [2|6] -> Conv(2->4), Conv(6->4) -> Add -> Conv(4->4) -> y
    """
    b = GraphBuilder(seed)
    w = b.randn(8, 3, 3, 3)
    w[:2] *= 1e-3
    h = b.relu(b.conv("x", 3, 8, weight=b.const(w, "W")))
    s1, s2 = b.op("Split", [h, b.ints([2, 6])], n_out=2, axis=1)
    h = b.relu(b.op("Add", [b.conv(s1, 2, 4), b.conv(s2, 6, 4)]))
    return _finish(b, b.conv(h, 4, 4))


# -- random architectures (property tests) --------------------------------------------------------------------
BLOCKS = ("cbr", "residual", "concat", "depthwise", "grouped", "se")


def random_stack(blocks: Sequence[tuple[str, int]], seed: int = 0, in_ch: int = 3) -> onnx.ModelProto:
    """A stem followed by ``blocks`` (kind, width) and a final Conv(->2) to ``y``::

        x -> stem Conv(3->w0) -> block_1 -> block_2 -> ... -> Conv(->2) -> y
        cbr:       Conv(c->w)+BN+Relu
        residual:  h + Conv(w'->c)(Conv(c->w')+Relu)          (keeps c)
        concat:    Concat(Conv(c->w)+Relu, Conv1x1(c->w2)+Relu), w2 = max(2, w // 2)   (c -> w + w2)
        depthwise: DWConv(c)+BN+Relu -> Conv1x1(c->w)
        grouped:   Conv(c->2k, group=2)+BN+Relu, after a Conv1x1(c->c+1) when c is odd; it may read a Concat
                   (several groups, as in ``concat_into_grouped_conv``)
        se:        h * Sigmoid(Conv(Conv(GAP(h))))            (keeps c)
    """
    b = GraphBuilder(seed)
    h, c = "x", in_ch
    for kind, w in blocks:
        w = max(2, int(w))
        if kind == "cbr":
            h, c = b.cbr(h, c, w), w
        elif kind == "residual":
            t = b.relu(b.conv(h, c, w))
            h = b.relu(b.op("Add", [h, b.bn(b.conv(t, w, c, k=1), c)]))
        elif kind == "concat":
            w2 = max(2, w // 2)
            p = b.relu(b.conv(h, c, w))
            q = b.relu(b.conv(h, c, w2, k=1))
            h, c = b.op("Concat", [p, q], axis=1), w + w2
        elif kind == "depthwise":
            h = b.cbr(h, c, c, group=c) if c > 1 else h
            h, c = b.relu(b.conv(h, c, w, k=1)), w
        elif kind == "grouped":
            if c % 2:
                h, c = b.relu(b.conv(h, c, c + 1, k=1)), c + 1
            w = w + (w % 2)
            h, c = b.cbr(h, c, w, group=2), w
        elif kind == "se":
            r = max(1, c // 2)
            s = b.relu(b.conv(b.op("GlobalAveragePool", [h]), c, r, k=1))
            s = b.op("Sigmoid", [b.conv(s, r, c, k=1)])
            h = b.op("Mul", [h, s])
        else:
            raise ValueError(kind)
    return _finish(b, b.conv(h, c, 2, k=1))


#: Every pattern builder by name (used by test_patterns).
BUILDERS = {
    "conv_bn_relu_chain": conv_bn_relu_chain,
    "residual_add": residual_add,
    "bottleneck": bottleneck,
    "concat_branches": concat_branches,
    "depthwise_separable": depthwise_separable,
    "inverted_residual": inverted_residual,
    "se_block": se_block,
    "grouped_conv_g2": lambda seed=0: grouped_conv(seed, 2),
    "grouped_conv_g4": lambda seed=0: grouped_conv(seed, 4),
    "depthwise_multiplier": depthwise_multiplier,
    "flatten_gemm_head": flatten_gemm_head,
    "mlp_head": mlp_head,
    "conv_transpose": conv_transpose,
    "constant_node_weights": constant_node_weights,
    "shared_initializer": shared_initializer,
    "split_channels": split_channels,
    "split_channels_equal": lambda seed=0: split_channels(seed, explicit_sizes=False),
    "conv1d": conv1d,
    "conv3d": conv3d,
    "prelu": prelu,
    "per_channel_affine": per_channel_affine,
    "pool_pad_resize": pool_pad_resize,
    "reshape_gemm": reshape_gemm,
    "reshape_gemm_infer": lambda seed=0: reshape_gemm(seed, (0, -1)),
    "instance_norm": instance_norm,
    "output_only_conv": output_only_conv,
    "unsupported_op": unsupported_op,
    "lrn_block": lrn_block,
    "dynamic_batch_chain": dynamic_batch_chain,
    "layer_norm_channels_last": layer_norm_channels_last,
    "channel_shuffle": channel_shuffle,
    "slice_channels": slice_channels,
    "gather_channels": gather_channels,
    "softmax_over_channels": softmax_over_channels,
    "concat_graph_input": concat_graph_input,
}


def tiny_transformer(seed: int = 0, layers: int = 1, heads: int = 2, head_dim: int = 4, ffn: int = 16,
                     vocab: int = 10, seq: int = 5) -> onnx.ModelProto:
    """A post-norm BERT-like encoder over int64 ``ids`` [1, seq], built by hand:

        ids -> Gather(token table) + position table -> LN ->
          [ Q/K/V: MatMul+bias -> Reshape [1,S,H,D] -> Transpose -> Q K^T * scale -> Softmax -> P V -> Transpose
            -> Reshape [1,S,H*D] -> O: MatMul+bias ] + residual -> LN -> [ up: MatMul -> Relu -> down ] + residual
          -> LN   (x layers)   -> classifier MatMul(hidden -> 3) -> y

    groups: hidden (the residual stream), per layer the heads and the MLP width; the classifier's 3 outputs."""
    b = GraphBuilder(seed)
    hidden = heads * head_dim

    def linear(x: str, k: int, n: int, name: str) -> str:
        return b.op("Add", [b.op("MatMul", [x, b.const(b.randn(k, n), name)]), b.const(b.randn(n, scale=0.1), "b")])

    def norm(x: str) -> str:
        g = b.const((b.rng.uniform(0.5, 1.5, hidden)).astype(np.float32), "ln_g")
        return b.op("LayerNormalization", [x, g, b.const(b.randn(hidden, scale=0.1), "ln_b")], axis=-1)

    x = b.op("Add", [b.op("Gather", [b.const(b.randn(vocab, hidden), "tok"), "ids"], axis=0),
                     b.const(b.randn(1, seq, hidden), "pos")])
    x = norm(x)
    for _ in range(layers):
        split = b.ints([1, seq, heads, head_dim])
        q, k, v = (b.op("Transpose", [b.op("Reshape", [linear(x, hidden, hidden, w), split])], perm=[0, 2, 1, 3])
                   for w in ("Wq", "Wk", "Wv"))
        scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                              b.floats(head_dim ** -0.5)])
        ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        merged = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), b.ints([1, seq, hidden])])
        x = norm(b.op("Add", [linear(merged, hidden, hidden, "Wo"), x]))
        up = b.relu(linear(x, hidden, ffn, "Wup"))
        x = norm(b.op("Add", [linear(up, ffn, hidden, "Wdown"), x]))
    b.op("MatMul", [x, b.const(b.randn(hidden, 3), "Wcls")])
    b.nodes[-1].output[0] = "y"
    graph = helper.make_graph(b.nodes, "tiny_transformer",
                              [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, seq, 3])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxprune-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def attention_block(heads: int = 2, kv_heads: int | None = None, computed_shape: bool = False) -> tuple:
    """x[1,S,8] -> Q: MatMul(8->H*D), K, V: MatMul(8->KV*D) -> Reshape [1,S,H,D] -> Transpose [1,H,S,D]
    (K, V: repeated KV -> H by Unsqueeze/Expand/Reshape) -> Q K^T -> Softmax -> P V -> Transpose ->
    Reshape [1,S,H*D] -> O: MatMul(H*D->3) -> y"""
    S, D = 4, 4  # sequence length, head_dim
    kv = kv_heads or heads
    b = GraphBuilder(5)

    def heads_of(width: int, count: int, name: str) -> str:
        proj = b.op("MatMul", ["x", b.const(b.randn(8, width), name)])
        if computed_shape:  # Concat(Shape(x)[0:2], [count, D]) as the legacy exporter writes it
            lead = b.op("Slice", [b.op("Shape", ["x"]), b.ints([0]), b.ints([2])])
            shape = b.op("Concat", [lead, b.ints([count, D])], axis=0)
        else:
            shape = b.ints([1, S, count, D])
        return b.op("Transpose", [b.op("Reshape", [proj, shape])], perm=[0, 2, 1, 3])

    q, k, v = heads_of(heads * D, heads, "Wq"), heads_of(kv * D, kv, "Wk"), heads_of(kv * D, kv, "Wv")
    if kv != heads:
        def repeat(t: str) -> str:
            e = b.op("Expand", [b.op("Unsqueeze", [t, b.ints([2])]), b.ints([1, kv, heads // kv, S, D])])
            return b.op("Reshape", [e, b.ints([1, heads, S, D])])
        k, v = repeat(k), repeat(v)
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    p = b.op("Softmax", [b.op("Mul", [scores, b.floats([0.5])])], axis=-1)
    merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3]),
                              b.ints([1, S, heads * D])])
    y = b.op("MatMul", [merged, b.const(b.randn(heads * D, 3), "Wo")])
    return _finish(b, y, x_shape=(1, S, 8)), q, merged
