"""Training-step overhead of the torch bridge: the same network as a native torch module and as its ONNX export
run by :class:`onnxprune.training.bridge.OnnxModule`, one training step each (forward, loss, backward, Adam step),
interleaved so machine noise hits both alike. Reports the median step times and their ratio.

    python tools/bench_bridge.py [--models lenet5,resnet18,mobilenet_v2] [--steps 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import types
from pathlib import Path

import onnx
import torch

from onnxprune.training.bridge import OnnxModule


def _torchvision():
    for stub in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    import torchvision
    return torchvision


def lenet5() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 20, 5), torch.nn.MaxPool2d(2), torch.nn.Conv2d(20, 50, 5),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(800, 500), torch.nn.ReLU(),
                               torch.nn.Linear(500, 10))


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The native module and a batch for it."""
    if name == "lenet5":
        return lenet5(), torch.randn(64, 1, 28, 28)
    return getattr(_torchvision().models, name)(num_classes=1000), torch.randn(8, 3, 224, 224)


def export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    module.eval()
    torch.onnx.export(module, (x[:1],), buffer, input_names=["input"], output_names=["logits"], opset_version=17,
                      do_constant_folding=False,  # keep BatchNormalization nodes: both sides train the same layers
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def step_time(module: torch.nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, bridged: bool) -> float:
    start = time.perf_counter()
    out = module(x)[0] if bridged else module(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(name: str, steps: int) -> dict:
    torch.manual_seed(0)
    native, x = build(name)
    model = export(native, x)
    bridge = OnnxModule(model)
    native.train()
    bridge.train()
    y = torch.randint(0, 10, (x.shape[0],))
    opt_n = torch.optim.Adam(native.parameters(), lr=1e-4)
    opt_b = torch.optim.Adam(bridge.parameters(), lr=1e-4)
    for _ in range(2):  # warm-up
        step_time(native, opt_n, x, y, False)
        step_time(bridge, opt_b, x, y, True)
    times_n, times_b = [], []
    for k in range(steps):
        order = [(native, opt_n, False, times_n), (bridge, opt_b, True, times_b)]
        for module, opt, bridged, sink in (order if k % 2 == 0 else order[::-1]):
            sink.append(step_time(module, opt, x, y, bridged))
    ms_n, ms_b = statistics.median(times_n) * 1e3, statistics.median(times_b) * 1e3
    return {"model": name, "batch": list(x.shape), "native_ms": round(ms_n, 2), "bridge_ms": round(ms_b, 2),
            "ratio": round(ms_b / ms_n, 3), "threads": torch.get_num_threads(),
            "params_native": sum(p.numel() for p in native.parameters()),
            "params_bridge": sum(p.numel() for p in bridge.parameters())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet18,mobilenet_v2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [measure(name, args.steps) for name in args.models.split(",")]
    for r in rows:
        print(f"{r['model']:14s} batch {r['batch'][0]:3d}: native {r['native_ms']:8.1f} ms, bridge "
              f"{r['bridge_ms']:8.1f} ms, ratio {r['ratio']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
