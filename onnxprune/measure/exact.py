"""Integer ops in their exact form, for verification.

onnxruntime's u8s8 kernels (uint8 activations times int8 weights: ConvInteger, MatMulInteger,
DynamicQuantizeMatMul, MatMulIntegerToFloat, which dynamic quantization writes) use VPMADDUBSW on x86 CPUs without VNNI,
which saturates each *pair* of adjacent products at int16. The result then depends on which channels sit next to
each other: removing a channel re-pairs the rest, so a pruned model and its masked original can differ by that
saturation although ONNX defines these ops with exact int32 sums (quantizers offer ``reduce_range`` against it).

:func:`exact_integer_ops` rewrites a model so that every int8 operand of those ops (and its zero point) is moved
to uint8 by adding 128 -- the same integers after the zero point is subtracted -- where onnxruntime's u8u8
kernels sum exactly. The verifier runs the masked original and the pruned model in that form, which checks the
rewrite under the ops' ONNX semantics; the models written are left as they are. (onnxruntime has no u8u8
QLinearConv: static QOperator models are compared as they run.)

:func:`continuous_activations` is the QDQ counterpart: a float op before an activation ``QuantizeLinear`` sums
fewer terms in the pruned model, so its result may differ from the masked original's in the last bit, and a
value lying on a rounding boundary then takes the next code -- one quantization step, carried on through the
rest of the network. The check runs every activation ``QuantizeLinear -> DequantizeLinear`` pair as the
identity (no rounding, no saturation): weights (their DequantizeLinear of kept codes and scales) are compared
exactly, activations up to float rounding, as for a float model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["continuous_activations", "exact_integer_ops"]

#: (domain, op) -> (data port, zero point port) of every operand that may hold int8 codes.
_OPERANDS: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {
    ("", "ConvInteger"): ((0, 2), (1, 3)),
    ("", "MatMulInteger"): ((0, 2), (1, 3)),
    ("com.microsoft", "DynamicQuantizeMatMul"): ((1, 3),),
    ("com.microsoft", "MatMulIntegerToFloat"): ((0, 4), (1, 5)),
}


def _int8_names(model: onnx.ModelProto) -> set[str]:
    """Tensors known to be int8: initializers, graph inputs, and what shape inference types (light models)."""
    names = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8}
    for vi in list(model.graph.input) + list(model.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.INT8:
            names.add(vi.name)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == TensorProto.INT8:
            names.add(node.output[0])
    return names


def exact_integer_ops(model: onnx.ModelProto) -> None:
    """Edit ``model`` in place: int8 operands of integer ops (and their zero points) become uint8 + 128."""
    int8 = _int8_names(model)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    shifted: dict[str, str] = {}
    for node in nodes:
        operands = _OPERANDS.get((node.domain if node.domain != "ai.onnx" else "", node.op_type), ())
        moves = [(d, z) for d, z in operands if d < len(node.input) and node.input[d] in int8]
        for data, zero in moves:
            node.input[data] = _shift(model, node.input[data], shifted)
            while len(node.input) <= zero:
                node.input.append("")
            if node.input[zero]:
                node.input[zero] = _shift(model, node.input[zero], shifted)
            else:
                name = f"{node.input[data]}__zero128"
                if name not in shifted.values():
                    model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), name))
                    shifted[name] = name
                node.input[zero] = name
        model.graph.node.append(node)


def _shift(model: onnx.ModelProto, name: str, shifted: dict[str, str]) -> str:
    """``name`` (int8) + 128 as uint8, computed once."""
    if name in shifted:
        return shifted[name]
    wide, plus, out = f"{name}__i32", f"{name}__plus128", f"{name}__u8"
    if not any(t.name == "__c128" for t in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.int32), "__c128"))
    model.graph.node.extend([
        helper.make_node("Cast", [name], [wide], to=TensorProto.INT32),
        helper.make_node("Add", [wide, "__c128"], [plus]),
        helper.make_node("Cast", [plus], [out], to=TensorProto.UINT8)])
    shifted[name] = out
    return out


def continuous_activations(model: onnx.ModelProto, constants: set[str] | frozenset[str] = frozenset()) -> None:
    """Edit ``model`` in place: a ``DequantizeLinear`` of a ``QuantizeLinear`` of a computed tensor passes the
    quantizer's float input on unrounded (an Identity); the QuantizeLinear itself stays (its codes may be read
    elsewhere). A constant quantized in the graph (a bias) keeps its rounding: ``constants`` names the model's
    stored constants (a light model holds its large ones as inputs), what is computed from them alone is too."""
    known = set(constants) | {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        names = [n for n in node.input if n]
        if node.op_type == "Constant" or (names and all(n in known for n in names)):
            known.update(node.output)
    for k, node in enumerate(model.graph.node):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        quantizer = producers.get(node.input[0])
        if (quantizer is None or quantizer.op_type != "QuantizeLinear" or quantizer.domain not in ("", "ai.onnx")
                or quantizer.input[0] in known):
            continue
        model.graph.node[k].CopyFrom(helper.make_node("Identity", [quantizer.input[0]], list(node.output),
                                                      name=node.name))
