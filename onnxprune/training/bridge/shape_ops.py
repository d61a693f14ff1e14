"""Shape and data-movement operators for the torch bridge."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper

from onnxprune.training.bridge.registry import TORCH_DTYPES, OpContext, axis_of, ints_of, op, text_of


@op("Shape")
def _shape(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    dims = torch.tensor(list(x[0].shape), dtype=torch.int64, device=x[0].device)
    start, end = a.get("start", 0), a.get("end")
    return [dims[start:end]]


@op("Size")
def _size(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.tensor(x[0].numel(), dtype=torch.int64, device=x[0].device)]


@op("Reshape")
def _reshape(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, shape = x[0], ints_of(x[1])
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [t.reshape(shape)]


@op("Flatten")
def _flatten(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    axis = axis_of(a.get("axis", 1), t.dim())
    return [t.reshape(int(np.prod(t.shape[:axis])), -1)]


@op("Transpose")
def _transpose(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(perm)]


@op("Squeeze")
def _squeeze(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    axes = a.get("axes") if "axes" in a else (ints_of(x[1]) if len(x) > 1 and x[1] is not None else None)
    t = x[0]
    if axes is None:
        return [t.squeeze()]
    return [t.squeeze([axis_of(d, t.dim()) for d in axes])]


@op("Unsqueeze")
def _unsqueeze(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    axes = a["axes"] if "axes" in a else ints_of(x[1])
    t = x[0]
    rank = t.dim() + len(axes)
    for d in sorted(axis_of(d, rank) for d in axes):
        t = t.unsqueeze(d)
    return [t]


@op("Concat")
def _concat(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    parts = [t for t in x if t is not None and (t.dim() == 0 or t.numel() > 0 or t.dim() > 1)]
    return [torch.cat(parts, dim=a["axis"])]


@op("Split")
def _split(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, n_out = x[0], ctx.n_outputs
    axis = axis_of(a.get("axis", 0), t.dim())
    sizes = a.get("split")
    if sizes is None and len(x) > 1 and x[1] is not None:
        sizes = ints_of(x[1])
    if sizes is None:
        size = t.shape[axis]
        chunk = -(-size // n_out)
        sizes = [min(chunk, size - chunk * i) for i in range(n_out)]
    return list(torch.split(t, list(sizes), dim=axis))


@op("Slice")
def _slice(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ints_of(x[1]), ints_of(x[2])
        axes = ints_of(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = ints_of(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, t.dim())
        size = t.shape[axis]
        if step > 0:
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            t = t.narrow(axis, lo, max(hi - lo, 0))[(slice(None),) * axis + (slice(None, None, step),)] \
                if step > 1 else t.narrow(axis, lo, max(hi - lo, 0))
        else:
            lo = max(-1, min(size - 1, start + size if start < 0 else start))
            hi = max(-1, min(size - 1, end + size if end < 0 else end))
            index = torch.arange(lo, hi, step, device=t.device)
            t = t.index_select(axis, index)
    return [t]


@op("Gather")
def _gather(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, index = x[0], x[1].long()
    axis = axis_of(a.get("axis", 0), t.dim())
    index = torch.where(index < 0, index + t.shape[axis], index)
    out = t.index_select(axis, index.reshape(-1))
    return [out.reshape(list(t.shape[:axis]) + list(index.shape) + list(t.shape[axis + 1:]))]


@op("GatherElements")
def _gather_elements(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, index = x[0], x[1].long()
    axis = axis_of(a.get("axis", 0), t.dim())
    return [torch.gather(t, axis, torch.where(index < 0, index + t.shape[axis], index))]


@op("GatherND")
def _gather_nd(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    data, index = x[0], x[1].long()
    dims = int(a.get("batch_dims", 0))
    if dims:
        raise NotImplementedError("GatherND with batch_dims")
    depth = index.shape[-1]
    index = torch.where(index < 0, index + torch.tensor(data.shape[:depth], device=index.device), index)
    return [data[tuple(index[..., k] for k in range(depth))]]


@op("Expand")
def _expand(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    shape = ints_of(x[1])
    t = x[0]
    rank = max(t.dim(), len(shape))
    full = [1] * (rank - len(shape)) + shape
    have = [1] * (rank - t.dim()) + list(t.shape)
    target = [h if s == 1 else s for h, s in zip(have, full)]
    return [t.reshape(have).expand(target)]


@op("ScatterElements")
def _scatter_elements(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, index, updates = x[0], x[1].long(), x[2]
    axis = axis_of(a.get("axis", 0), t.dim())
    index = torch.where(index < 0, index + t.shape[axis], index)
    reduction = text_of(a.get("reduction", "none"))
    if reduction == "none":
        return [t.scatter(axis, index, updates)]
    return [t.scatter_reduce(axis, index, updates, {"add": "sum", "mul": "prod"}.get(reduction, reduction))]


@op("Tile")
def _tile(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0].repeat(ints_of(x[1]))]


@op("ConstantOfShape")
def _constant_of_shape(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    value = a.get("value")
    arr = np.zeros(1, np.float32) if value is None else value
    dtype = TORCH_DTYPES[helper.np_dtype_to_tensor_dtype(arr.dtype)]
    return [torch.full(ints_of(x[0]), arr.reshape(-1)[0].item(), dtype=dtype, device=x[0].device)]


@op("Range")
def _range(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype, device=x[0].device)]


@op("Pad")
def _pad(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    mode = text_of(a.get("mode", "constant"))
    pads = a["pads"] if "pads" in a else ints_of(x[1])
    value = a.get("value", 0.0)
    if len(x) > 2 and x[2] is not None and x[2].numel():
        value = float(x[2].reshape(-1)[0])
    rank = t.dim()
    axes = list(range(rank))
    if len(x) > 3 and x[3] is not None:
        axes = [axis_of(d, rank) for d in ints_of(x[3])]
    begins, ends = pads[:len(axes)], pads[len(axes):]
    full_b, full_e = [0] * rank, [0] * rank
    for d, b, e in zip(axes, begins, ends):
        full_b[d], full_e[d] = b, e
    flat: list[int] = []
    for d in reversed(range(rank)):
        flat += [full_b[d], full_e[d]]
    while len(flat) > 2 and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # torch pads only trailing dimensions in non-constant modes
    if mode == "constant":
        return [F.pad(t, flat, value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return [F.pad(t, flat, mode=torch_mode)]

