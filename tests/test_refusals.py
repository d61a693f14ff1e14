"""The refusal set: models onnxprune must handle cleanly. For each one, ``prune`` either succeeds (the result is
valid, runs, keeps its interface, is mask-equivalent, and every blocked group says why) or raises an
``OnnxPruneError`` with one line and exit code 1; the CLI exits 0 or 1 and never prints a traceback.

Every model is built inside the tests (quantized copies of the bundled MNIST model, hand-built If/Loop graphs,
tiny torch exports), so the file needs nothing but the installed packages. Observed outcomes at ratio 0.5:

==========================  =========================================================================
dynamic quantization        succeeds: ConvInteger/MatMulInteger codes cut like the float model, mask-equivalent
static QDQ / QOperator      succeeds: DequantizeLinear weight codes / QLinearConv codes cut with their scales,
                            mask-equivalent (tests/ops/test_quantized.py has the details)
convs inside If branches    succeeds: the branch convs read only the graph input; the group after the If
                            prunes
If reading a conv output    succeeds: the group read inside the branch is blocked ("read inside a subgraph")
If cond from a conv         succeeds: same (the branches read a conv output implicitly)
Loop carrying a conv out    succeeds: "consumed by unsupported op Loop"
Loop body reading outside   succeeds: blocked like If
LSTM / GRU after convs      succeeds: first conv prunes, the conv feeding the RNN is blocked
TransformerEncoder          succeeds: FFN hidden dims prune, attention/residual groups blocked
custom-domain op            exit 1 "cannot verify: onnxruntime cannot run the input model" (UnsupportedError);
                            with verify=False the op's group is blocked, the rest prunes
no prunable channels        succeeds, 1 group blocked ("reaches graph output"), nothing changes
==========================  =========================================================================
"""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import GraphBuilder
from conftest import EXAMPLE_MODEL, assert_mask_equivalent, exact_integer_form, interface, masked_model, run_ort
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main

CALIB = EXAMPLE_MODEL.parent / "mnist_calib.npz"
RATIO = 0.5


# ==============================================================================================================
# Model builders (each returns serialized bytes, cached: callers get a fresh ModelProto every time)
# ==============================================================================================================
def _finish(b: GraphBuilder, y: str, y_shape, x_shape=(1, 3, 8, 8), opsets=(), check=True) -> onnx.ModelProto:
    """Like ``builders._finish`` but with a declared output shape (inference stops at subgraphs/custom ops)."""
    model = b.model(x_shape, y, y_shape, opsets)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _cond_from(b: GraphBuilder, x: str) -> str:
    """A bool scalar computed from ``x``: mean(x) > 0."""
    return b.op("Greater", [b.op("ReduceMean", [x], keepdims=0), b.floats(0.0)])


def _sub_conv(name: str, x: str, cin: int, cout: int, seed: int) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    """A 3x3 Conv node for a subgraph, with its weight as a subgraph initializer."""
    w = (np.random.default_rng(seed).standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)
    node = helper.make_node("Conv", [x, name + "_W"], [name + "_out"], name=name, kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    return node, numpy_helper.from_array(w, name + "_W")


def _branch(nodes, out: str, inits=()) -> onnx.GraphProto:
    return helper.make_graph(nodes, out + "_graph", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                             list(inits))


def if_convs_inside() -> onnx.ModelProto:
    """Convs inside both If branches, reading only the graph input; convs after the If::

        x -> If(mean(x) > 0; then: Conv_t(x, 3->8), else: Conv_e(x, 3->8)) -> Conv(8->6)+Relu -> Conv(6->4) -> y
        groups: 6 (prunable), 4 (output); the branch convs are never touched
    """
    b = GraphBuilder(0)
    tn, tw = _sub_conv("then_conv", "x", 3, 8, 1)
    en, ew = _sub_conv("else_conv", "x", 3, 8, 2)
    o = b.op("If", [_cond_from(b, "x")], then_branch=_branch([tn], "then_conv_out", [tw]),
             else_branch=_branch([en], "else_conv_out", [ew]))
    h = b.relu(b.conv(o, 8, 6))
    return _finish(b, b.conv(h, 6, 4), [1, 4, 8, 8])


def if_reads_conv_output() -> onnx.ModelProto:
    """The then-branch's conv reads an outer conv output implicitly (by name, not as an If input)::

        x -> Conv(3->8)+Relu = h
        If(mean(x) > 0; then: Conv_t(h, 8->8), else: Relu(h)) -> Conv(8->4) -> y
        h's group must stay intact: the branch conv's weights are fixed to 8 input channels
    """
    b = GraphBuilder(0)
    h = b.relu(b.conv("x", 3, 8))
    tn, tw = _sub_conv("then_conv", h, 8, 8, 1)
    else_g = _branch([helper.make_node("Relu", [h], ["else_out"], name="else_relu")], "else_out")
    o = b.op("If", [_cond_from(b, "x")], then_branch=_branch([tn], "then_conv_out", [tw]), else_branch=else_g)
    return _finish(b, b.conv(o, 8, 4), [1, 4, 8, 8])


def if_cond_from_conv() -> onnx.ModelProto:
    """Top-level convs feed an If: one decides its condition, the other is read by both branches::

        x -> Conv(3->8)+Relu = h -> mean(h) > 0 = cond          (ReduceMean over the channels: h blocked)
        h -> Conv(8->6)+Relu = h2; If(cond; then: Relu(h2), else: Sigmoid(h2)) -> Conv(6->4) -> y
        h2's group must stay intact (it is read inside the branches)
    """
    b = GraphBuilder(0)
    h = b.relu(b.conv("x", 3, 8))
    h2 = b.relu(b.conv(h, 8, 6))
    then_g = _branch([helper.make_node("Relu", [h2], ["t_out"], name="t_relu")], "t_out")
    else_g = _branch([helper.make_node("Sigmoid", [h2], ["e_out"], name="e_sigmoid")], "e_out")
    o = b.op("If", [_cond_from(b, h)], then_branch=then_g, else_branch=else_g)
    return _finish(b, b.conv(o, 6, 4), [1, 4, 8, 8])


def _loop_body(extra_nodes=(), out: str = "body_relu_out") -> onnx.GraphProto:
    conv, w = _sub_conv("body_conv", "v_in", 8, 8, 3)
    nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"), conv,
             helper.make_node("Relu", ["body_conv_out"], ["body_relu_out"], name="body_relu"), *extra_nodes]
    return helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [w])


def _loop_inputs(b: GraphBuilder) -> tuple[str, str]:
    return (b.const(np.array(2, dtype=np.int64), "trip", as_node=False),
            b.const(np.array(True), "cond", as_node=False))


def loop_carries_conv_output() -> onnx.ModelProto:
    """A Loop (2 trips) whose body holds a conv; an outer conv output is its loop-carried input::

        x -> Conv(3->8)+Relu = h -> Loop(v = Relu(Conv_body(v, 8->8))) -> Conv(8->4) -> y
        h's group: blocked by the Loop (an explicit input)
    """
    b = GraphBuilder(0)
    h = b.relu(b.conv("x", 3, 8))
    trip, cond = _loop_inputs(b)
    o = b.op("Loop", [trip, cond, h], body=_loop_body())
    return _finish(b, b.conv(o, 8, 4), [1, 4, 8, 8])


def loop_reads_conv_output() -> onnx.ModelProto:
    """As above, but the body also adds another outer conv output ``h2`` it reads implicitly::

        x -> Conv(3->8)+Relu = h -> Conv(8->8)+Relu = h2
        Loop(v_init = h; v = Relu(Conv_body(v)) + h2) -> Conv(8->4) -> y
        h2's group must stay intact (the body adds it to an 8-channel tensor)
    """
    b = GraphBuilder(0)
    h = b.relu(b.conv("x", 3, 8))
    h2 = b.relu(b.conv(h, 8, 8))
    trip, cond = _loop_inputs(b)
    body = _loop_body([helper.make_node("Add", ["body_relu_out", h2], ["body_add_out"], name="body_add")],
                      "body_add_out")
    o = b.op("Loop", [trip, cond, h], body=body)
    return _finish(b, b.conv(o, 8, 4), [1, 4, 8, 8])


def custom_op_chain() -> onnx.ModelProto:
    """A custom-domain op in the middle of a conv chain (onnxruntime does not know it)::

        x -> Conv(3->8)+Relu -> com.example.MyOp -> Conv(8->6)+Relu -> Conv(6->4) -> y
        groups: 8 (blocked: unsupported op), 6 (prunable), 4 (output)
    """
    b = GraphBuilder(0)
    h = b.relu(b.conv("x", 3, 8))
    h = b.op("MyOp", [h], domain="com.example")
    h = b.relu(b.conv(h, 8, 6))
    return _finish(b, b.conv(h, 6, 4), [1, 4, 8, 8], opsets=[("com.example", 1)], check=False)


def no_prunable_channels() -> onnx.ModelProto:
    """A single conv whose output is the graph output: one group, blocked."""
    b = GraphBuilder(0)
    return _finish(b, b.conv("x", 3, 4), [1, 4, 8, 8])


# -- quantized copies of the bundled model ---------------------------------------------------------------------
def _calibration_reader(n: int = 4):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            data = np.load(CALIB)["input"][:n]
            self._it = iter([{"input": x[None].astype(np.float32)} for x in data])

        def get_next(self):
            return next(self._it, None)

    return Reader()


def _quantize(kind: str, tmp: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    out = tmp / f"{kind}.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "please consider pre-processing" warnings
    try:
        if kind == "dynamic":
            quantize_dynamic(str(EXAMPLE_MODEL), str(out))
        else:
            fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
            quantize_static(str(EXAMPLE_MODEL), str(out), _calibration_reader(), quant_format=fmt)
    finally:
        root.setLevel(level)
    return onnx.load(str(out))


# -- torch exports (legacy exporter) ---------------------------------------------------------------------------
def _torch_export(module, example, name: str, tmp: Path) -> onnx.ModelProto:
    import torch

    path = tmp / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    return onnx.load(str(path))


def _conv_rnn(kind: str, tmp: Path) -> onnx.ModelProto:
    """Conv front-end feeding an LSTM/GRU: x[1,1,4,6] -> Conv(1->8)+Relu -> Conv(8->8)+Relu -> permute/reshape
    [1,6,32] -> RNN(32->16) -> last step -> Linear(16->5) -> y."""
    import torch

    class ConvRNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
            self.rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(32, 16, batch_first=True)
            self.fc = torch.nn.Linear(16, 5)

        def forward(self, x):
            h = self.conv(x)
            n, c, hh, t = h.shape
            out, _ = self.rnn(h.permute(0, 3, 1, 2).reshape(n, t, c * hh))
            return self.fc(out[:, -1])

    torch.manual_seed(0)
    return _torch_export(ConvRNN(), torch.randn(1, 1, 4, 6), kind, tmp)


def _transformer(tmp: Path) -> onnx.ModelProto:
    """``nn.TransformerEncoder``: 2 layers, d_model 32, 4 heads, FFN 64; x[1,5,32] -> y[1,5,32]."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return _torch_export(encoder, torch.randn(1, 5, 32), "transformer", tmp)


# -- the refusal set -------------------------------------------------------------------------------------------
_HAND_BUILT = {
    "if_convs_inside": if_convs_inside,
    "if_reads_conv_output": if_reads_conv_output,
    "if_cond_from_conv": if_cond_from_conv,
    "loop_carries_conv_output": loop_carries_conv_output,
    "loop_reads_conv_output": loop_reads_conv_output,
    "custom_op": custom_op_chain,
    "no_prunable_channels": no_prunable_channels,
}


@pytest.fixture(scope="module")
def refusal_models(tmp_path_factory):
    """name -> a function returning a fresh copy of that model (built once per module)."""
    tmp = tmp_path_factory.mktemp("refusals")

    def cached(build):
        data = functools.lru_cache(maxsize=None)(lambda: build().SerializeToString())
        return lambda: onnx.load_from_string(data())

    makers = {name: cached(fn) for name, fn in _HAND_BUILT.items()}
    for kind in ("dynamic", "qdq", "qoperator"):
        makers[f"quant_{kind}"] = cached(functools.partial(_quantize, kind, tmp))
    for kind in ("lstm", "gru"):
        makers[f"conv_{kind}"] = cached(functools.partial(_conv_rnn, kind, tmp))
    makers["transformer"] = cached(functools.partial(_transformer, tmp))
    return makers


#: name -> the outcome of prune(ratio=0.5): "ok" (a result), "error" (exit-1 OnnxPruneError), "either"
EXPECTED = {
    "quant_dynamic": "ok",
    "quant_qdq": "ok",
    "quant_qoperator": "ok",
    "if_convs_inside": "ok",
    "if_reads_conv_output": "ok",
    "if_cond_from_conv": "ok",
    "loop_carries_conv_output": "ok",
    "loop_reads_conv_output": "ok",
    "conv_lstm": "ok",
    "conv_gru": "ok",
    "transformer": "ok",
    "custom_op": "either",
    "no_prunable_channels": "ok",
}


def _cases():
    out = []
    for name, expected in EXPECTED.items():
        if isinstance(expected, str):
            out.append(pytest.param(name, expected, id=name))
        else:
            out.append(pytest.param(name, expected.values[0], id=name, marks=expected.marks))
    return out


# ==============================================================================================================
# Contract helpers
# ==============================================================================================================
def typed_feeds(model: onnx.ModelProto, seed: int = 3, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Random feeds of each input's own element type (symbolic dims: 1)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (rng.standard_normal(shape) + shift).astype(dtype)
    return feeds


def assert_valid_result(model: onnx.ModelProto, result: onnxprune.PruneResult) -> None:
    """The success half of the contract."""
    onnx.checker.check_model(result.model, full_check=True)
    assert interface(result.model) == interface(model)
    for shift in (-3.0, 3.0):  # both If branches where a condition depends on the input
        feeds = typed_feeds(model, shift=shift)
        got = run_ort(result.model, feeds)
        want = run_ort(model, feeds)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert [g.dtype for g in got] == [w.dtype for w in want]
        if result.plan.tensors:
            assert_mask_equivalent_on(model, result, feeds)  # the independent oracle, on both branches
    if result.verification is not None:
        assert result.verification.mask_equivalent is True
    for row in result.report["groups"]:
        if row["blocked"] is not None:
            assert isinstance(row["blocked"], str) and row["blocked"].strip(), row
    for group in result.analysis.groups:
        assert group.blocked is None or group.blocked.strip()


def assert_clean_error(exc: onnxprune.OnnxPruneError) -> None:
    """The refusal half: exit code 1, one non-empty line."""
    message = str(exc)
    assert message.strip() and "\n" not in message.strip(), message
    assert exc.exit_code == 1, f"{type(exc).__name__} (exit {exc.exit_code}): {message}"


def prune_outcome(model: onnx.ModelProto, **options):
    try:
        return onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO, **options)), None
    except onnxprune.OnnxPruneError as exc:
        return None, exc


def rows_by_source(result) -> dict[str, dict]:
    return {src: row for row in result.report["groups"] for src in row["sources"]}


def assert_clean_cli(capfd, argv: list[str], output: Path | None) -> int:
    """Run the CLI; exit 0 (a valid output written) or 1 (exactly one error line); no traceback, no
    onnxruntime log spam, no internal error, on stdout or stderr (fd level: onnxruntime logs from C++)."""
    code = main(argv)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "internal error" not in text, text
    assert "[E:onnxruntime" not in text and "[W:onnxruntime" not in text, text
    assert code in (0, 1), f"exit {code}: {captured.err}"
    lines = captured.err.strip().splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), captured.err
        assert output is None or not output.exists()
    elif output is not None:
        assert all(line.startswith(("onnxprune: ", "groups:", "params:", "MACs:", "size:", "verified:"))
                   for line in lines), captured.err
        onnx.checker.check_model(onnx.load(str(output)), full_check=True)
    return code


# ==============================================================================================================
# The contract, for every model of the set
# ==============================================================================================================
@pytest.mark.parametrize("name,expected", _cases())
def test_prune_contract(refusal_models, name, expected):
    model = refusal_models[name]()
    result, error = prune_outcome(model)
    if error is not None:
        assert_clean_error(error)
        assert expected in ("error", "either"), f"refused: {error}"
    else:
        assert_valid_result(model, result)
        assert expected in ("ok", "either")


@pytest.mark.parametrize("name,expected", _cases())
def test_cli_contract(refusal_models, name, expected, tmp_path, capfd):
    path = tmp_path / f"{name}.onnx"
    onnx.save(refusal_models[name](), str(path))
    out = tmp_path / "out.onnx"
    code = assert_clean_cli(capfd, [str(path), "--ratio", str(RATIO), "-o", str(out)], out)
    assert code == {"ok": 0, "error": 1}.get(expected, code)
    assert assert_clean_cli(capfd, ["inspect", str(path)], None) in (0, 1)


# ==============================================================================================================
# What each model's outcome is, in detail
# ==============================================================================================================
@pytest.mark.parametrize("kind,ops", [("dynamic", {"ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"}),
                                      ("qdq", {"QuantizeLinear", "DequantizeLinear", "Conv"}),
                                      ("qoperator", {"QLinearConv"})])
def test_quantized_model_prunes_like_the_float_model(refusal_models, kind, ops):
    model = refusal_models[f"quant_{kind}"]()
    assert ops <= {n.op_type for n in model.graph.node}
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    assert result.plan.tensors
    assert result.report["macs_kept"] < 0.3
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert_mask_equivalent_on(model, result, {"input": np.load(CALIB)["input"][:4]})
    assert {n.op_type for n in result.model.graph.node} <= {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("kind", ["dynamic", "qdq", "qoperator"])
def test_quantized_model_report_says_why_the_head_stays(refusal_models, kind):
    analysis = onnxprune.analyze(refusal_models[f"quant_{kind}"]())
    assert [g.blocked for g in analysis.groups if g.blocked] == ["reaches graph output 'logits'"]
    assert sum(g.prunable for g in analysis.groups) == 6


def test_if_branch_convs_left_alone_group_after_if_prunes(refusal_models):
    model = refusal_models["if_convs_inside"]()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    sizes = [(row["size"], row["kept"], row["blocked"]) for row in result.report["groups"]]
    assert sizes == [(6, 3, None), (4, 4, "reaches graph output 'y'")]
    if_node = next(n for n in result.model.graph.node if n.op_type == "If")
    original_if = next(n for n in model.graph.node if n.op_type == "If")
    assert if_node.SerializeToString() == original_if.SerializeToString()  # the branches are untouched
    for shift in (-3.0, 3.0):  # one branch, then the other
        assert_mask_equivalent_on(model, result, typed_feeds(model, shift=shift))


def assert_mask_equivalent_on(model, result, feeds, rtol: float = 1e-4) -> None:
    """conftest's oracle (the masked original) on given feeds."""
    want = run_ort(exact_integer_form(masked_model(model, result.plan)), feeds)
    got = run_ort(exact_integer_form(result.model), feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        err = float(np.abs(g.astype(np.float64) - w).max()) / max(float(np.abs(w).max()), 1e-6)
        assert err <= rtol, err


def _implicit_reads(model: onnx.ModelProto) -> set[str]:
    """Main-graph tensors that If/Loop bodies read by name."""
    produced = {o for n in model.graph.node for o in n.output}
    reads = set()
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                reads |= {i for sn in a.g.node for i in sn.input if i in produced}
    return reads


@pytest.mark.parametrize("name", ["if_reads_conv_output", "if_cond_from_conv", "loop_reads_conv_output"])
def test_tensor_read_inside_subgraph_is_blocked(refusal_models, name):
    model = refusal_models[name]()
    readers = _implicit_reads(model)
    assert readers
    for group in onnxprune.analyze(model).groups:
        if readers & set(group.tensors):
            assert group.blocked, f"group {group.id} ({group.sources}) is read inside a subgraph yet prunable"


def test_subgraph_reader_no_verify_still_writes_runnable_model(refusal_models, tmp_path, capfd):
    path, out = tmp_path / "if.onnx", tmp_path / "if.pruned.onnx"
    model = refusal_models["if_reads_conv_output"]()
    onnx.save(model, str(path))
    assert main([str(path), "--no-verify", "-o", str(out), "-q"]) == 0
    capfd.readouterr()
    pruned = onnx.load(str(out))
    for shift in (-3.0, 3.0):
        run_ort(pruned, typed_feeds(model, shift=shift))


def test_loop_carried_conv_output_is_blocked(refusal_models):
    model = refusal_models["loop_carries_conv_output"]()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    reasons = [row["blocked"] for row in result.report["groups"]]
    assert reasons[0].startswith("consumed by unsupported op Loop"), reasons
    assert not result.plan.tensors


@pytest.mark.parametrize("kind,op", [("lstm", "LSTM"), ("gru", "GRU")])
def test_recurrent_op_blocks_the_conv_feeding_it(refusal_models, kind, op):
    model = refusal_models[f"conv_{kind}"]()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    rows = rows_by_source(result)
    first, feeding, head = rows["/conv/conv.0/Conv"], rows["/conv/conv.2/Conv"], rows["/fc/Gemm"]
    assert (first["size"], first["kept"], first["blocked"]) == (8, 4, None)
    assert feeding["blocked"] == f"consumed by unsupported op {op} (/rnn/{op})"
    assert feeding["kept"] == feeding["size"] == 8
    assert head["blocked"] == "reaches graph output 'y'"
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    rnn = next(n for n in result.model.graph.node if n.op_type == op)
    original = next(n for n in model.graph.node if n.op_type == op)
    assert list(rnn.input) == list(original.input)


def test_transformer_heads_prune_and_the_report_says_what_blocks_the_rest(refusal_models):
    model = refusal_models["transformer"]()
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "LayerNormalization", "Softmax"} <= ops
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    rows = result.report["groups"]
    assert len(rows) == 8  # per layer: in-projection (4 heads), out-projection (32), linear1 (64), linear2 (32)
    for layer in (0, 1):
        mine = {row["sources"][0]: row for row in rows if f"/layers.{layer}/" in row["sources"][0]}
        qkv = mine[f"/layers.{layer}/self_attn/MatMul"]
        out_proj = mine[f"/layers.{layer}/self_attn/Gemm"]
        ffn1 = mine[f"/layers.{layer}/linear1/MatMul"]
        ffn2 = mine[f"/layers.{layer}/linear2/MatMul"]
        assert (qkv["size"], qkv["kept"], qkv["blocked"]) == (4, 2, None)  # packed in_proj: 4 heads, half cut
        assert out_proj["size"] == 32 and out_proj["kept"] == 32
        assert out_proj["blocked"].startswith(f"Add /layers.{layer}/Add combines the channels with a fixed "
                                              "operand")  # the residual stream (hidden width)
        assert ffn2["kept"] == 32 and ffn2["blocked"].startswith(f"Add /layers.{layer}/Add_1 combines the "
                                                                 "channels with a fixed operand")
        assert (ffn1["size"], ffn1["kept"], ffn1["blocked"]) == (64, 32, None)  # the FFN hidden dim prunes
    assert result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    assert 0.45 < result.report["macs_kept"] < 0.6  # heads and FFN halved; the residual stream stays


def test_custom_op_without_verification_prunes_around_it(refusal_models):
    model = refusal_models["custom_op"]()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO, verify=False))
    rows = [(row["size"], row["kept"], row["blocked"]) for row in result.report["groups"]]
    assert rows[0][:2] == (8, 8) and rows[0][2].startswith("consumed by unsupported op com.example.MyOp")
    assert rows[1:] == [(6, 3, None), (4, 4, "reaches graph output 'y'")]
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.domain for o in result.model.opset_import] == [o.domain for o in model.opset_import]


def test_custom_op_with_verification_fails_cleanly(refusal_models):
    """onnxruntime cannot run the input itself: a clean one-line UnsupportedError (exit 1), never exit 3."""
    _, error = prune_outcome(refusal_models["custom_op"]())
    assert isinstance(error, onnxprune.UnsupportedError)
    assert "cannot run the input model" in str(error) and "\n" not in str(error)


def test_no_prunable_channels_changes_nothing(refusal_models):
    model = refusal_models["no_prunable_channels"]()
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=RATIO))
    assert [(row["size"], row["kept"], row["blocked"]) for row in result.report["groups"]] == [
        (4, 4, "reaches graph output 'y'")]
    assert not result.plan.tensors and result.report["macs_kept"] == 1.0
    assert [g.prunable for g in onnxprune.analyze(model).groups] == [False]
    feeds = typed_feeds(model)
    np.testing.assert_array_equal(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0])
