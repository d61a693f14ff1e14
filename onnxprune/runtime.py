"""onnxruntime sessions that borrow the model's weights instead of serialising them.

Large initializers are handed to onnxruntime as external OrtValues over numpy views, so a session costs one
copy of the graph structure, not of the weights; ``edit`` lets a caller change the light graph first (the
mask-equivalence check inserts its masks that way).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .graph import SMALL_CONSTANT, copy_fields, subgraph_reads as _subgraph_reads
from .graph import static_input_shapes

__all__ = ["Session", "random_inputs"]


class Session:
    """An ``onnxruntime.InferenceSession`` on ``model`` that keeps the weight arrays it borrows alive."""

    def __init__(self, model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], None] | None = None,
                 threads: int = 0, optimize: bool = True,
                 arrays: Callable[[str], np.ndarray | None] | None = None) -> None:
        """``optimize=False`` turns off graph optimizations and weight prepacking (a one-off check needs
        neither, and both copy weights); ``arrays`` may supply initializer values already in memory."""
        light, names, arrays = _split(model, arrays)
        if edit is not None:
            edit(light)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the caller as exceptions, not as log lines
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
        self._values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        if names:
            options.add_external_initializers(names, self._values)
        self._arrays = arrays
        self.session = ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


_BORROWABLE = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32,
               TensorProto.INT8, TensorProto.UINT8}


def _split(model: onnx.ModelProto, known: Callable[[str], np.ndarray | None] | None = None
           ) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    src, dst = model.graph, light.graph
    copy_fields(src, dst, skip=("initializer",))
    names: list[str] = []
    arrays: list[np.ndarray] = []
    read = {n for node in src.node for n in node.input} | {o.name for o in src.output} | _subgraph_reads(src)
    for t in src.initializer:
        if t.name not in read:
            continue  # onnxruntime drops unread initializers and then refuses to replace them
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n <= SMALL_CONSTANT or t.data_type not in _BORROWABLE:
            dst.initializer.append(t)
            continue
        array = known(t.name) if known is not None else None
        array = np.ascontiguousarray(array if array is not None else numpy_helper.to_array(t))
        placeholder = dst.initializer.add()
        placeholder.name, placeholder.data_type = t.name, t.data_type
        placeholder.dims.extend(t.dims)
        placeholder.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "onnxprune-borrowed"), ("offset", "0"), ("length", str(array.nbytes))):
            entry = placeholder.external_data.add()
            entry.key, entry.value = key, value
        names.append(t.name)
        arrays.append(array)
    return light, names, arrays


def random_inputs(model: onnx.ModelProto, seed: int = 0, shapes: dict[str, list[int]] | None = None
                  ) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input (normal floats, zeros for integers and booleans)."""
    rng = np.random.default_rng(seed)
    concrete = static_input_shapes(model, shapes)
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in concrete:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = concrete[vi.name]
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds
