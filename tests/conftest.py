"""Shared helpers: run a model in onnxruntime, count params, and an independent mask-equivalence oracle.

The oracle (:func:`masked_reference_outputs`) is written here on purpose, not borrowed from
``onnxprune.rewriting.verify``: it inserts a ``Mul`` by the plan's 0/1 keep-mask right after every listed tensor of the
*original* model, exactly as DESIGN.md states the contract, so a bug in the library's own verifier cannot hide
a bug in its rewriter.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLE_MODEL = ROOT / "models" / "mnist_resnet.onnx"

#: What installs each optional package the tests import. ``pip install ".[dev]"`` runs the fast suite; the rest
#: skips, naming the package. Everything: ``pip install torch==2.13.0`` first, then ``pip install ".[test]"``.
FULL_INSTALL = 'pip install torch==2.13.0, then pip install ".[test]"'
OPTIONAL = {
    "torch": FULL_INSTALL, "torchvision": FULL_INSTALL, "torch_pruning": FULL_INSTALL, "mlxtend": FULL_INSTALL,
    "onnxscript": FULL_INSTALL, "PIL": 'pip install ".[dev]"', "matplotlib": 'pip install ".[dev]"',
    "hypothesis": 'pip install ".[dev]"',
}


def needs(package: str, where: str = "") -> str:
    """The skip reason for a missing optional package (``where``: the line that imports it)."""
    return f"needs {package}{f' ({where})' if where else ''}, not installed: {OPTIONAL.get(package, FULL_INSTALL)}"


def _missing_optional(exc: ModuleNotFoundError) -> str | None:
    """The skip reason when ``exc`` is test material (tests/, tools/) importing an optional package that is not
    installed; None for anything else (onnxprune itself must handle a missing package, so that stays a failure)."""
    package = (exc.name or "").split(".")[0]
    if package not in OPTIONAL:
        return None
    try:
        if importlib.util.find_spec(package) is not None:
            return None  # installed but broken: a real failure
    except (ImportError, ValueError):
        return None
    importer, line = None, 0
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame that is not importlib's is the one that ran the import
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<"):
            importer, line = Path(filename).resolve(), tb.tb_lineno
        tb = tb.tb_next
    if importer is None or not any(importer.is_relative_to(ROOT / d) for d in ("tests", "tools")):
        return None
    return needs(package, f"{importer.relative_to(ROOT)}:{line}")


def _skip_missing_optional():
    """Hook wrapper body: a missing optional package imported by the test's own code skips the test."""
    try:
        return (yield)
    except ModuleNotFoundError as exc:
        reason = _missing_optional(exc)
        if reason is None:
            raise
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skip_missing_optional())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skip_missing_optional())


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` on CPU with graph optimisations off (bit-stable across runs)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def input_shapes(model: onnx.ModelProto, batch: int = 2) -> dict[str, list[int]]:
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    return shapes


def random_feeds(model: onnx.ModelProto, seed: int = 123, batch: int = 2) -> dict[str, np.ndarray]:
    """Standard normal floats; integer inputs get 0s and 1s (token ids valid for any table), attention masks ones."""
    rng = np.random.default_rng(seed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    feeds = {}
    for name, shape in input_shapes(model, batch).items():
        if types[name] in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            low = 1 if "mask" in name.lower() else 0  # a fully masked row is NaN after softmax
            feeds[name] = rng.integers(low, 2, shape).astype(helper.tensor_dtype_to_np_dtype(types[name]))
        elif types[name] in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):  # quantized codes: the whole range
            dtype = helper.tensor_dtype_to_np_dtype(types[name])
            info = np.iinfo(dtype)
            feeds[name] = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def interface(model: onnx.ModelProto) -> list[tuple[str, list]]:
    """(name, dims) of the real graph inputs and of the outputs."""
    inits = {t.name for t in model.graph.initializer}

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    return ([("in:" + vi.name, dims(vi)) for vi in model.graph.input if vi.name not in inits]
            + [("out:" + vi.name, dims(vi)) for vi in model.graph.output])


def count_params(model: onnx.ModelProto) -> int:
    """Float elements in initializers and Constant nodes (independent of onnxprune.measure.macs)."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    total += int(np.prod(a.t.dims))
    return total


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    return {name: len(shape) for name, shape in tensor_shapes(model).items()}


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                            for d in vi.type.tensor_type.shape.dim]
    return out


def measured_ranks(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Ranks of intermediate tensors, read from one onnxruntime run of ``model`` on random inputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    values = run_ort(probe, random_feeds(model))
    return {n: v.ndim for n, v in zip(names, values[len(model.graph.output):])}


def masked_model(model: onnx.ModelProto, plan) -> onnx.ModelProto:
    """The original with ``t * mask`` inserted after every plan tensor (the plan's contract, literally; as
    ``Where(mask, t, 0)`` from opset 9)."""
    ranks = tensor_ranks(model)
    entries = {t.name: t for t in plan.tensors}
    unknown = [name for name in entries if name not in ranks]
    if unknown:  # past ops onnx cannot infer (contrib ops, computed shapes): run the original and look
        ranks.update(measured_ranks(model, unknown))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    g = masked.graph
    nodes = list(g.node)
    del g.node[:]
    for node in nodes:
        hits = [o for o in node.output if o in entries]
        for k, o in enumerate(node.output):
            if o in entries:
                node.output[k] = o + "__raw"
        g.node.append(node)
        for o in hits:
            t = entries[o]
            mask = np.zeros(t.size, dtype=bool)
            mask[list(t.keep)] = True
            mask = mask.reshape([t.size] + [1] * (ranks[o] - 1 - t.axis))
            if opset >= 9:  # zeroed with Where: a removed channel's -inf (an attention mask) is not 0 * inf = NaN
                g.initializer.append(numpy_helper.from_array(mask, o + "__mask"))
                zero = zero_of(model, o)
                if isinstance(zero, np.ndarray):
                    if zero.size > 1:
                        zero = zero.reshape(mask.shape)
                    g.initializer.append(numpy_helper.from_array(zero, o + "__zero"))
                    zero = o + "__zero"
                g.node.append(helper.make_node("Where", [o + "__mask", o + "__raw", zero], [o],
                                               name=o + "__masking"))
            else:
                g.initializer.append(numpy_helper.from_array(mask.astype(np.float32), o + "__mask"))
                g.node.append(helper.make_node("Mul", [o + "__raw", o + "__mask"], [o], name=o + "__masking"))
    del g.value_info[:]
    return masked


#: Quantized ops: the input holding their output's zero point (the integer code of 0.0).
ZERO_POINT_PORT = {"QuantizeLinear": 2, "QLinearConv": 7, "QLinearMatMul": 7, "QGemm": 8, "QLinearAdd": 7,
                   "QLinearMul": 7, "QLinearConcat": 1, "QLinearGlobalAveragePool": 4, "QLinearAveragePool": 4,
                   "QLinearSigmoid": 4, "QLinearLeakyRelu": 4}
#: Ops whose integer outputs are accumulators (0 is 0.0), and codes that keep their input's zero point.
ACCUMULATORS = ("ConvInteger", "MatMulInteger")
CODE_PASSING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Concat",
                "Resize", "Split", "Gather")


def zero_of(model: onnx.ModelProto, name: str) -> np.ndarray | str:
    """What "multiplied by 0" writes into ``name``: float 0, or for quantized codes their zero point (a
    constant's value, or a DynamicQuantizeLinear's computed zero point by name); the plan's contract in the
    float domain the codes stand for."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for _ in range(len(model.graph.node) + 1):
        dq = next((n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name), None)
        if dq is not None:  # codes a DequantizeLinear reads: its zero point is their 0.0
            return inits[dq.input[2]].copy() if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.uint8)
        if name not in producers:
            break
        node = producers[name]
        if node.op_type == "DynamicQuantizeLinear":
            return node.output[2]
        if node.op_type in ZERO_POINT_PORT:
            port = ZERO_POINT_PORT[node.op_type]
            if port < len(node.input) and node.input[port]:
                return inits[node.input[port]].copy()
            return np.zeros((), np.uint8 if node.op_type == "QuantizeLinear" else np.float32)
        if node.op_type in ACCUMULATORS:
            return np.zeros((), np.int32)
        if node.op_type not in CODE_PASSING:
            break
        name = node.input[0]
    return np.zeros((), np.float32)


#: Integer ops: (data, zero point) ports of their operands that may hold int8 weight codes.
INT8_OPERANDS = {"ConvInteger": ((1, 3),), "MatMulInteger": ((1, 3),), "DynamicQuantizeMatMul": ((1, 3),),
                 "MatMulIntegerToFloat": ((1, 5),)}


def exact_integer_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose int8 weight codes (and zero points) are uint8 + 128: the same integers once the zero point
    is subtracted, but onnxruntime's u8u8 kernels sum them exactly where its u8s8 ones (VPMADDUBSW, CPUs
    without VNNI) saturate pairs of products, which makes the result depend on which channels are neighbours."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        for data, zero in INT8_OPERANDS.get(node.op_type, ()):
            t = inits.get(node.input[data]) if data < len(node.input) else None
            if t is None or t.data_type != onnx.TensorProto.INT8:
                continue
            for port in (data, zero):
                while len(node.input) <= port:
                    node.input.append("")
                old = inits.get(node.input[port])
                value = numpy_helper.to_array(old) if old is not None else np.zeros((), np.int8)
                name = f"{node.input[port] or node.input[data] + '_zp'}__u8"
                if name not in inits:
                    inits[name] = numpy_helper.from_array((value.astype(np.int32) + 128).astype(np.uint8), name)
                    out.graph.initializer.append(inits[name])
                node.input[port] = name
    return out


def unrounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which each DequantizeLinear of a QuantizeLinear's codes passes the float input on (Identity):
    in a QDQ model a float op that sums fewer terms may differ in the last bit, and a value on a rounding
    boundary then takes the next code; weights (DequantizeLinear of constants) stay as they are."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    producers = {o: n for n in out.graph.node for o in n.output}
    constant = {t.name for t in out.graph.initializer}  # a constant quantized in the graph (a bias) stays rounded
    for node in out.graph.node:
        if node.op_type == "Constant" or (node.input and all(n in constant for n in node.input if n)):
            constant.update(node.output)
    for node in out.graph.node:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear" and source.input[0] not in constant:
            node.CopyFrom(helper.make_node("Identity", [source.input[0]], list(node.output), name=node.name))
    return out


def assert_mask_equivalent(original: onnx.ModelProto, pruned: onnx.ModelProto, plan, seed: int = 7,
                           rtol: float = 1e-4) -> None:
    """Pruned outputs equal the masked original's, relative to the output scale."""
    feeds = random_feeds(original, seed)
    want = run_ort(exact_integer_form(masked_model(unrounded(original), plan)), feeds)
    got = run_ort(exact_integer_form(unrounded(pruned)), feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(float(np.abs(w).max()), 1e-6)
        err = float(np.abs(g.astype(np.float64) - w).max()) / scale
        assert err <= rtol, f"pruned differs from masked original by {err:.3g} (relative)"


@pytest.fixture
def example_model(tmp_path: Path) -> Path:
    """A private copy of the bundled example model."""
    dst = tmp_path / "mnist_resnet.onnx"
    dst.write_bytes(EXAMPLE_MODEL.read_bytes())
    return dst


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def write_mnist_pngs(root: Path, per_class: int = 2, stray_file: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """PNGs of MNIST calibration samples in class subfolders 0..9 (plus a non-image file the loader must skip);
    returns (inputs, labels) in folder order."""
    from PIL import Image

    with np.load(ROOT / "models" / "mnist_calib.npz") as a:
        x, y = a["input"], a["labels"]
    xs, ys = [], []
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in np.nonzero(y == c)[0][:per_class]:
            pixels = np.clip(np.rint((x[i, 0] * MNIST_STD + MNIST_MEAN) * 255), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / str(c) / f"{i:04d}.png")
            xs.append(x[i])
            ys.append(c)
    if stray_file:
        (root / "notes.txt").write_text("not an image\n")
    return np.stack(xs), np.array(ys)
