"""Write large random-weight test models with external data, in bounded memory (issue 15).

* ``conv``: a deep plain convolutional net, input (1, 3, 8, 8): a 3x3 stem to ``--width`` channels, ``--depth``
  blocks Conv 3x3 (width -> width) + BatchNormalization + Relu, GlobalAveragePool, Flatten, Gemm to 10 classes.
  The defaults (width 1024, depth 64) make ~2.42 GB of fp32 weights.
* ``llama``: a LLaMA-style decoder in the form the legacy (TorchScript) exporter writes for
  ``transformers.LlamaForCausalLM``: hidden 2048, 16 layers, GQA 32 query / 8 KV heads of 64, SwiGLU MLP 7168,
  RMSNorm, RoPE, vocabulary 32000, untied head, inputs ``input_ids`` and ``attention_mask`` of shape (1, 16);
  ~4.0 GB of fp32 weights. A 2-layer model of that width is exported with torch (~1 GB, seconds); the graph of
  its second layer is then repeated (tensors renamed ``layers.k``) up to ``--layers``, and every weight is
  drawn anew and streamed to the data file, so building never holds more than one layer's weights.

Weights are written one tensor at a time to ``<name>.data`` beside the model at 4096-byte aligned offsets (tensors
under 1 KiB stay inline), so building costs far less memory than the model's size.

    python tools/build_large_models.py --out /tmp/large [--which conv llama] [--seed 0]
    python tools/build_large_models.py --out /tmp/small --which conv --width 64 --depth 4   # a few MB
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096
INLINE_BYTES = 1024


class DataWriter:
    """Appends tensors to one external data file at aligned offsets and makes the TensorProtos pointing there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")

    def tensor(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        if array.nbytes < INLINE_BYTES:
            return onnx.numpy_helper.from_array(array, name)
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        self.file.write(b"\0" * ((-self.file.tell()) % ALIGN))
        offset = self.file.tell()
        self.file.write(array.data)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t

    def close(self) -> None:
        self.file.close()


def _normal(rng: np.random.Generator, shape: Iterable[int], scale: float) -> np.ndarray:
    out = rng.standard_normal(tuple(shape), dtype=np.float32)
    out *= np.float32(scale)
    return out


def _save(model: onnx.ModelProto, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


# --------------------------------------------------------------------------- the conv net


def build_conv(path: str | Path, width: int = 1024, depth: int = 64, seed: int = 0) -> Path:
    """The deep plain conv net (see the module docstring); returns the model's path."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    data = DataWriter(path.with_name(path.name + ".data"))
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    x, cin = "input", 3
    try:
        for k in range(depth + 1):
            w = data.tensor(f"conv{k}.weight", _normal(rng, (width, cin, 3, 3), (2.0 / (cin * 9)) ** 0.5))
            b = data.tensor(f"conv{k}.bias", _normal(rng, (width,), 0.01))
            inits += [w, b]
            nodes.append(helper.make_node("Conv", [x, w.name, b.name], [f"conv{k}"], name=f"conv{k}",
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            bn = [data.tensor(f"bn{k}.{p}", v) for p, v in (
                ("scale", 1.0 + _normal(rng, (width,), 0.1)), ("bias", _normal(rng, (width,), 0.1)),
                ("mean", _normal(rng, (width,), 0.1)), ("var", 1.0 + np.abs(_normal(rng, (width,), 0.1))))]
            inits += bn
            nodes.append(helper.make_node("BatchNormalization", [f"conv{k}"] + [t.name for t in bn], [f"bn{k}"],
                                          name=f"bn{k}"))
            nodes.append(helper.make_node("Relu", [f"bn{k}"], [f"relu{k}"], name=f"relu{k}"))
            x, cin = f"relu{k}", width
        fc_w = data.tensor("fc.weight", _normal(rng, (10, width), width ** -0.5))
        fc_b = data.tensor("fc.bias", np.zeros(10, np.float32))
        inits += [fc_w, fc_b]
    finally:
        data.close()
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "deep_conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


# --------------------------------------------------------------------------- the LLaMA-style decoder

LLAMA = dict(hidden_size=2048, intermediate_size=7168, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
             vocab_size=32000, seq=16)


def _export_two_layers(path: Path, cfg: dict, seed: int) -> None:
    """The legacy export of a 2-layer ``LlamaForCausalLM`` of the target width (random weights)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    import transformer_models  # noqa: F401 - stubs torchvision's compiled ops before transformers loads
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                         intermediate_size=cfg["intermediate_size"], num_hidden_layers=2,
                         num_attention_heads=cfg["num_attention_heads"],
                         num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                         max_position_embeddings=max(64, cfg["seq"]), tie_word_embeddings=False,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.randint(0, cfg["vocab_size"], (1, cfg["seq"]), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.onnx.export(Wrapper(model), (ids, mask), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"])


def _layer_of(name: str) -> int | None:
    marker = "/layers."
    at = name.find(marker)
    if at < 0:
        return None
    digits = name[at + len(marker):].split("/", 1)[0]
    return int(digits) if digits.isdigit() else None


def _repeat_layers(src: onnx.ModelProto, layers: int) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """The node list with layer 1 repeated as layers 1..layers-1, and each copy's initializer -> its source."""
    nodes = list(src.graph.node)
    first = next(i for i, n in enumerate(nodes) if _layer_of(n.name) == 1)
    last = max(i for i, n in enumerate(nodes) if _layer_of(n.name) == 1)
    block = nodes[first:last + 1]
    inits = {t.name for t in src.graph.initializer}
    produced = {o for n in block for o in n.output}
    block_inits = {i for n in block for i in n.input if i in inits}
    layer_in = next(i for n in block for i in n.input if i.endswith("/layers.0/Add_1_output_0"))
    layer_out = next(o for o in produced if o.endswith("/layers.1/Add_1_output_0"))
    sources: dict[str, str] = {}
    out_nodes = nodes[:first] + block
    previous_out = layer_out
    for k in range(2, layers):
        def rename(name: str, k: int = k, previous_out: str = previous_out) -> str:
            if name in produced:
                return name.replace("/layers.1/", f"/layers.{k}/")
            if name in block_inits:
                new = name.replace("layers.1.", f"layers.{k}.") if "layers.1." in name else f"{name}.layer{k}"
                sources[new] = name
                return new
            return previous_out if name == layer_in else name
        for n in block:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = n.name.replace("/layers.1/", f"/layers.{k}/")
            for j, name in enumerate(copy.input):
                copy.input[j] = rename(name)
            for j, name in enumerate(copy.output):
                copy.output[j] = rename(name)
            out_nodes.append(copy)
        previous_out = rename(layer_out)
    for n in nodes[last + 1:]:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        for j, name in enumerate(copy.input):
            if name == layer_out:
                copy.input[j] = previous_out
        out_nodes.append(copy)
    return out_nodes, sources


def build_llama(path: str | Path, layers: int = 16, seed: int = 0, **overrides: int) -> Path:
    """The LLaMA-style decoder (see the module docstring); returns the model's path."""
    path = Path(path)
    cfg = {**LLAMA, **overrides}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        two = Path(tmp) / "two_layers.onnx"
        _export_two_layers(two, cfg, seed)
        src = onnx.load(str(two), load_external_data=False)  # weights are drawn anew below
    nodes, sources = _repeat_layers(src, layers)
    shapes = {t.name: (list(t.dims), t.data_type) for t in src.graph.initializer}
    for new, old in sources.items():
        shapes[new] = shapes[old]
    read = {i for n in nodes for i in n.input}
    rng = np.random.default_rng(seed)
    data = DataWriter(path.with_name(path.name + ".data"))
    inits: list[TensorProto] = []
    try:
        for t in src.graph.initializer:  # in the export's order, then the copies
            if t.name in read:
                inits.append(_llama_weight(data, rng, t.name, *shapes[t.name], src))
        for new in sources:
            inits.append(_llama_weight(data, rng, new, *shapes[new], src))
    finally:
        data.close()
    graph = helper.make_graph(nodes, src.graph.name, list(src.graph.input), list(src.graph.output), inits)
    model = helper.make_model(graph, opset_imports=list(src.opset_import), ir_version=src.ir_version,
                              producer_name="tools/build_large_models.py")
    _save(model, path)
    return path


def _llama_weight(data: DataWriter, rng: np.random.Generator, name: str, dims: list[int], dtype: int,
                  src: onnx.ModelProto) -> TensorProto:
    if dtype != TensorProto.FLOAT:  # integer constants the exporter folded: keep their values
        base = name.rsplit(".layer", 1)[0]
        t = next(t for t in src.graph.initializer if t.name == base)
        copy = TensorProto()
        copy.CopyFrom(t)
        copy.name = name
        return copy
    if len(dims) == 1:  # RMSNorm weights: around 1
        return data.tensor(name, 1.0 + _normal(rng, dims, 0.1))
    return data.tensor(name, _normal(rng, dims, 0.02))


# --------------------------------------------------------------------------- command line


def model_bytes(path: str | Path) -> int:
    """Bytes of the model file plus its ``.data`` file."""
    p = Path(path)
    data = p.with_name(p.name + ".data")
    return p.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/large"))
    ap.add_argument("--which", nargs="+", choices=("conv", "llama"), default=["conv", "llama"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=1024, help="conv: channels")
    ap.add_argument("--depth", type=int, default=64, help="conv: 3x3 blocks")
    ap.add_argument("--layers", type=int, default=16, help="llama: decoder layers")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for which in args.which:
        start = time.perf_counter()
        if which == "conv":
            p = build_conv(args.out / "conv.onnx", args.width, args.depth, args.seed)
        else:
            p = build_llama(args.out / "llama.onnx", args.layers, args.seed)
        print(f"{p}: {model_bytes(p) / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
