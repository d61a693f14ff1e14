"""com.microsoft activations that onnxruntime's transformer optimizer writes around MLPs (schemas of
onnxruntime's ContribOperators, domain version 1):

* ``Gelu(X)``, ``QuickGelu(X; alpha)`` = x * sigmoid(alpha * x): elementwise, Y has X's shape;
* ``FastGelu(X, bias?)``, ``BiasGelu(A, B)``: Gelu of ``X + bias``, where the bias is a 1-D tensor as long as
  X's last dimension (onnxruntime refuses any other bias rank);
* ``BiasAdd(X, bias, skip)`` = X + bias + skip, X and skip [N, S, C], bias [C] (onnxruntime has only a CUDA
  kernel for it).

The channels pass through (the output is labelled like the first input). A constant bias of the channel width is a
per-channel weight sliced with the channels; a bias that is computed, or channels on an axis other than the last
(the one the bias runs along), block the group. BiasAdd ties the channels of X and of skip like a residual
``Add``. All of them are free (no MACs).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.channels import Labeled
from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, register, same_rank


def _bias(node: NodeProto) -> tuple[int, str]:
    """The port and name of the node's bias input ("" when absent)."""
    return 1, node.input[1] if len(node.input) > 1 else ""


def _per_channel_bias(i: int, node: NodeProto, ctx: AnalysisContext, lx: Labeled) -> bool:
    """Declare the bias of a node whose first input carries the channels ``lx`` as a per-channel weight, or block
    the group with the reason; True when the channels can pass."""
    _, bias = _bias(node)
    if not bias:
        return True
    label = f"{node.op_type} {ctx.node_label(i)}"
    lb = ctx.labeled(bias)
    if lb is not None or not ctx.graph.is_const(bias):
        atoms = lx.atoms if lb is None else np.concatenate([lx.atoms, lb.atoms])
        ctx.block(atoms, f"{label} adds a non-constant bias ('{bias}') to the channels")
        return False
    rank = ctx.graph.rank(node.input[0])
    if rank is None:
        ctx.block(lx.atoms, f"{label}: rank of its input '{node.input[0]}' unknown, so the bias axis is unknown")
        return False
    if lx.axis != rank - 1:
        ctx.block(lx.atoms, f"{label} adds its bias along the last axis, but the channels lie on axis {lx.axis}")
        return False
    shape = ctx.graph.shape(bias)
    if shape is None or tuple(shape) != (lx.size,):
        ctx.block(lx.atoms, f"{label} has a bias of shape {shape} for {lx.size} channels ('{bias}')")
        return False
    ctx.weight(bias, lx.atoms, "const", i, axis=0)
    return True


def _block_bias_only(i: int, node: NodeProto, ctx: AnalysisContext) -> None:
    """Channels that reach the node only through its bias cannot follow (the bias broadcasts over them)."""
    _, bias = _bias(node)
    lb = ctx.labeled(bias) if bias else None
    if lb is not None:
        ctx.block(lb.atoms, f"{node.op_type} {ctx.node_label(i)} takes channels only in its bias")


def _slice_bias(i: int, node: NodeProto, rw: RewriteContext) -> None:
    port, bias = _bias(node)
    keep = rw.keep(node.output[0])
    if keep is None or not bias or rw.labeled(bias) is not None or not rw.graph.is_const(bias):
        return
    value = rw.const(bias)
    if value.ndim == 1 and value.shape[0] > 1:
        rw.set_input(i, port, np.take(value, keep, axis=0))


@register
class ContribActivation(Handler):
    """Gelu, QuickGelu, FastGelu (optional bias), BiasGelu (bias): channels pass, a constant bias is sliced."""

    op_types: ClassVar[tuple[str, ...]] = ("Gelu", "QuickGelu", "FastGelu", "BiasGelu")
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            _block_bias_only(i, node, ctx)
            return
        if _per_channel_bias(i, node, ctx, lx):
            ctx.set(node.output[0], lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        _slice_bias(i, node, rw)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """The input (plus the broadcast bias, plus the skip of BiasAdd): the output's shape."""
        terms = [n for n in node.input if n]
        if len(terms) == 1:
            return [helper.make_node("Identity", terms, [node.output[0]])]
        nodes, total = [], terms[0]
        for k, term in enumerate(terms[1:]):
            out = node.output[0] if k == len(terms) - 2 else f"{node.output[0]}__proxy{k}"
            nodes.append(helper.make_node("Add", [total, term], [out]))
            total = out
        return nodes


@register
class BiasAdd(ContribActivation):
    """X + bias + skip: X's and skip's channels are one group (a residual Add), the constant bias is sliced."""

    op_types = ("BiasAdd",)
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        label = f"BiasAdd {ctx.node_label(i)}"
        x, skip = node.input[0], node.input[2] if len(node.input) > 2 else ""
        lx, ls = ctx.labeled(x), ctx.labeled(skip) if skip else None
        if lx is None and ls is None:
            _block_bias_only(i, node, ctx)
            return
        if lx is None or ls is None:
            fixed = x if lx is None else skip
            ctx.block_inputs(i, f"{label} adds the channels to a fixed operand ('{fixed}')")
            return
        if lx.axis != ls.axis or lx.size != ls.size:
            ctx.block_inputs(i, f"{label} adds channels lying on different axes or of different widths")
            return
        ctx.tie(lx.atoms, ls.atoms)
        if _per_channel_bias(i, node, ctx, lx):
            ctx.set(node.output[0], lx.axis, lx.atoms)
