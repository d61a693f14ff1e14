"""onnxruntime sessions that borrow the model's weights instead of serialising them.

Large initializers are handed to onnxruntime as external OrtValues over numpy views, so a session costs one
copy of the graph structure, not of the weights; ``edit`` lets a caller change the light graph first (the
mask-equivalence check inserts its masks that way).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxprune.core.graph import SMALL_CONSTANT, copy_fields, light_model, static_input_shapes
from onnxprune.core.graph import subgraph_reads as _subgraph_reads
from onnxprune.core.modelio import inline_tensor, read_in_place, tensor_array
from onnxprune.errors import UsageError

__all__ = ["CPU", "InputSession", "Session", "borrowed", "check_provider", "expose", "provider_list", "random_inputs"]

CPU = "CPUExecutionProvider"


def check_provider(name: str) -> str:
    """``name`` if onnxruntime offers that execution provider here, else a :class:`UsageError` naming those it
    offers."""
    available = ort.get_available_providers()
    if name not in available:
        raise UsageError(f"execution provider '{name}' is not available in this onnxruntime "
                         f"(available: {', '.join(available)})")
    return name


def provider_list(name: str) -> list[str]:
    """The providers a session on ``name`` asks for: ``name`` first, the CPU for the ops it lacks."""
    return [name] if name == CPU else [name, CPU]


_EXPOSED_UNSAFE = ["ConvAddActivationFusion"]


class Session:
    """An ``onnxruntime.InferenceSession`` on ``model`` that keeps the weight arrays it borrows alive.

    ``optimize=True`` (calibration, evaluation) hands large initializers to onnxruntime as external
    initializers, which it copies and prepacks for speed. ``optimize=False`` (one-off checks) turns the weights
    into graph inputs fed with every run: onnxruntime reads the numpy arrays in place, so a check costs no
    second copy of the weights; a model read in place (:func:`onnxprune.core.modelio.load_model`) always runs
    so. ``arrays`` may supply constant values already in memory. ``providers`` are the
    onnxruntime execution providers in order of preference (default: the CPU).
    """

    def __init__(self, model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], None] | None = None,
                 threads: int = 0, optimize: bool = True,
                 arrays: Callable[[str], np.ndarray | None] | None = None,
                 providers: Sequence[str] | None = None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the caller as exceptions, not as log lines
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._weights: dict[str, np.ndarray] = {}
        if optimize and read_in_place(model):  # onnxruntime would copy (and prepack) weights it may map in place
            optimize = False
        if optimize:
            light, names, values = _split(model, arrays)
            if edit is not None:
                edit(light)
            read = {n for node in light.graph.node for n in node.input} | _subgraph_reads(light.graph)
            kept = [(n, v) for n, v in zip(names, values) if n in read]  # the edit may leave some unread
            drop = set(names) - read
            if drop:
                placeholders = [t for t in light.graph.initializer if t.name not in drop]
                del light.graph.initializer[:]
                light.graph.initializer.extend(placeholders)
            self._values = [ort.OrtValue.ortvalue_from_numpy(v) for _, v in kept]
            if kept:
                options.add_external_initializers([n for n, _ in kept], self._values)
            self._arrays = [v for _, v in kept]
        else:
            _inputs_options(options)
            light, self._weights = _as_inputs(model, arrays)
            if edit is not None:
                edit(light)
        # onnxruntime (1.32) fuses Conv + Add + Relu even where an edit made the Conv's output a graph output,
        # then fails to find that output: runs that expose intermediate tensors go without that fusion
        self.session = ort.InferenceSession(light.SerializeToString(), options,
                                            providers=list(providers or [CPU]),
                                            disabled_optimizers=_EXPOSED_UNSAFE if edit is not None else None)

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        return self.session.run(names, {**self._weights, **feeds} if self._weights else feeds)

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]


def _inputs_options(options: ort.SessionOptions) -> None:
    """Options for a session whose weights are fed as inputs: onnxruntime reads them in place, no prepacking."""
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")


class InputSession:
    """A plain onnxruntime session on ``light``, a small model (a piece of a larger one).

    Without ``weights`` its weights are graph inputs fed with every run (read in place). With ``weights`` (name
    -> array) the model holds placeholders for them (:func:`borrowed`), handed to onnxruntime as external
    initializers: it prepacks them (a copy of this piece's weights) and optimizes the graph, which pays when the
    piece runs many times on small batches."""

    def __init__(self, light: onnx.ModelProto, providers: Sequence[str] | None = None,
                 weights: dict[str, np.ndarray] | None = None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # numpy works between runs
        if weights:
            self._values = [ort.OrtValue.ortvalue_from_numpy(v) for v in weights.values()]
            options.add_external_initializers(list(weights), self._values)
            self._arrays = list(weights.values())
        else:
            _inputs_options(options)
        self.session = ort.InferenceSession(light.SerializeToString(), options, providers=list(providers or [CPU]))

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(names, feeds))


def borrowed(name: str, data_type: int, dims: Sequence[int], nbytes: int) -> TensorProto:
    """A placeholder initializer whose data onnxruntime is handed as an external initializer."""
    placeholder = TensorProto(name=name, data_type=data_type, dims=list(dims))
    placeholder.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "onnxprune-borrowed"), ("offset", "0"), ("length", str(nbytes))):
        entry = placeholder.external_data.add()
        entry.key, entry.value = key, value
    return placeholder


def quantization() -> ModuleType:
    """onnxruntime's quantizer package (``onnxruntime.quantization``), for ``--quantize``."""
    import onnxruntime.quantization

    return onnxruntime.quantization


def runtime_version() -> str:
    return str(ort.__version__)


def expose(names: list[str]) -> Callable[[onnx.ModelProto], None]:
    """A :class:`Session` edit that makes the intermediate tensors ``names`` graph outputs too, for runs that
    fetch ``names`` only: nodes that none of them depends on are left out (a consumer early in a decoder does
    not run the layers after it)."""
    def edit(light: onnx.ModelProto) -> None:
        known = {o.name for o in light.graph.output}
        light.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
        _keep_needed(light.graph, set(names))
    return edit


def _keep_needed(g: onnx.GraphProto, wanted: set[str]) -> None:
    """Drop the nodes and outputs of ``g`` that no tensor in ``wanted`` depends on (graphs with subgraphs, whose
    outer reads are harder to follow, stay whole)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return
    outputs = [o for o in g.output if o.name in wanted]
    needed = {o.name for o in outputs}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    if len(keep) == len(g.node) and len(outputs) == len(g.output):
        return
    kept = [onnx.NodeProto() for _ in keep]
    for new, node in zip(kept, reversed(keep)):
        new.CopyFrom(node)
    del g.node[:]
    g.node.extend(kept)
    del g.output[:]
    g.output.extend(outputs)


def _as_inputs(model: onnx.ModelProto, known: Callable[[str], np.ndarray | None] | None
               ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The light model (large constants as graph inputs) and the arrays to feed them with."""
    light = light_model(model)
    stored = {t.name for t in model.graph.initializer}
    kept = {t.name for t in light.graph.initializer}  # small constants stay inside the light model
    real = {vi.name for vi in model.graph.input} - stored
    weights: dict[str, np.ndarray] = {}
    for vi in light.graph.input:
        if vi.name in real or vi.name in kept:
            continue
        value = known(vi.name) if known is not None else None
        if value is None:
            t = next((t for t in model.graph.initializer if t.name == vi.name), None)
            if t is not None:
                value = tensor_array(t)
            else:  # a large Constant node turned into an input
                from onnxprune.core.graph import constant_node_value
                node = next(n for n in model.graph.node if n.output and n.output[0] == vi.name)
                value = constant_node_value(node)
        weights[vi.name] = np.ascontiguousarray(value)
    return light, weights


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
            dst.initializer.append(inline_tensor(t))
            continue
        array = known(t.name) if known is not None else None
        array = np.ascontiguousarray(array if array is not None else tensor_array(t))
        dst.initializer.append(borrowed(t.name, t.data_type, t.dims, array.nbytes))
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
