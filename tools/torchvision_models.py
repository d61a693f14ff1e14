"""Build and export torchvision test models (random weights) to ONNX.

Importable module and script::

    python tools/torchvision_models.py --out-dir /tmp/tv_exports [--exporter legacy|dynamo]
        [--archs resnet18,mobilenet_v2] [--dynamic] [--size 224] [--seed 0]

Models get random weights (never downloaded).  Every BatchNorm's affine
parameters and running statistics are re-randomised (seeded) so that BN folding
does not leave channels trivially equal; for ConvNeXt the LayerNorm affine
parameters and the ``layer_scale`` parameters (initialised to 1e-6 by
torchvision, which would make every block a near-identity) are randomised too.

Exporters:

* ``legacy``: TorchScript exporter (``dynamo=False``), opset 17, one
  self-contained ``.onnx`` file.
* ``dynamo``: the default ``torch.onnx`` exporter (``dynamo=True``, default
  opset of the installed torch).  Weights live in the external data file
  ``<file name>.data`` next to the model (e.g. ``resnet18.onnx.data``).

Both name the graph input ``input`` and the output ``output``.  With
``dynamic=True`` the batch dimension is symbolic (``batch``).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

for _n in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    # torchvision's compiled ops do not load beside the CPU-only torch build.
    sys.modules.setdefault(_n, types.ModuleType(_n))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

ARCHS: tuple[str, ...] = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
    "regnet_x_400mf",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "convnext_tiny",
    "googlenet",
    "mnasnet0_5",
    "resnext50_32x4d",
)

EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def signed_uniform(shape: torch.Size, gen: torch.Generator, lo: float = 0.5, hi: float = 1.5) -> torch.Tensor:
    """Uniform magnitudes in [lo, hi) with random sign."""
    mag = torch.empty(shape).uniform_(lo, hi, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    return mag * sign


@torch.no_grad()
def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise BatchNorm params/stats (and ConvNeXt LayerNorm / layer_scale) in place."""
    gen = torch.Generator().manual_seed(seed + 12345)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.weight is not None:
                m.weight.copy_(signed_uniform(torch.Size([n]), gen))
            if m.bias is not None:
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=gen))
        elif isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
            m.weight.copy_(signed_uniform(m.weight.shape, gen))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif type(m).__name__ == "CNBlock" and hasattr(m, "layer_scale"):
            m.layer_scale.copy_(signed_uniform(m.layer_scale.shape, gen, 0.05, 0.5))
    return model


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """Return torchvision model ``name`` in eval mode with seeded random weights."""
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; choose from {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    kwargs: dict = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    model = getattr(torchvision.models, name)(**kwargs)
    randomize_norms(model, seed)
    return model.eval()


def example_input(size: int = 224, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic example input of shape (batch, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed + 999)
    return torch.randn(batch, 3, size, size, generator=gen)


def export(
    name: str,
    path: str | Path,
    exporter: str = "legacy",
    dynamic: bool = False,
    size: int = 224,
    seed: int = 0,
) -> Path:
    """Export ``build(name, seed)`` to ONNX at ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build(name, seed)
    x = example_input(size, 1, seed)
    return export_module(model, x, path, exporter=exporter, dynamic=dynamic)


def export_module(
    model: torch.nn.Module,
    x: torch.Tensor,
    path: str | Path,
    exporter: str = "legacy",
    dynamic: bool = False,
) -> Path:
    """Export an arbitrary single-input module with the chosen exporter."""
    path = Path(path)
    if exporter == "legacy":
        dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=17,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
            )
    elif exporter == "dynamo":
        _export_dynamo(model, x, path, dynamic)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")
    return path


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool) -> None:
    """dynamo=True export with weights in ``<path>.data``."""
    import onnx

    dynamic_shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic else None
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    if data_path.exists():
        data_path.unlink()  # onnx appends to an existing external data file
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        external_data=True,
        verbose=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
    )
    program.save(str(path), external_data=True)
    if not data_path.exists():
        # Older/newer torch may embed or name the data file differently: re-save.
        proto = onnx.load(str(path))
        for stale in path.parent.glob(path.stem + "*.data"):
            stale.unlink()
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=0)
    if dynamic:
        # torch.export names the symbol e.g. "s77"; rename it to "batch" everywhere.
        proto = onnx.load(str(path), load_external_data=False)
        g = proto.graph
        sym = g.input[0].type.tensor_type.shape.dim[0].dim_param
        if sym and sym != "batch":
            for vi in list(g.input) + list(g.output) + list(g.value_info):
                for d in vi.type.tensor_type.shape.dim:
                    if d.dim_param == sym:
                        d.dim_param = "batch"
        onnx.save_model(proto, str(path))


def file_size(path: str | Path) -> int:
    """Bytes of the model file plus its external ``.data`` file, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def ort_diff(
    name: str,
    path: str | Path,
    size: int = 224,
    seed: int = 0,
    batch: int = 1,
) -> tuple[float, float]:
    """Run ``path`` in onnxruntime vs the torch model; return (max abs diff, rel err)."""
    import onnxruntime as ort

    model = build(name, seed)
    x = example_input(size, batch, seed)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    got = sess.run(None, {in_name: x.numpy()})[0]
    if got.shape != ref.shape:
        raise AssertionError(f"shape mismatch: onnx {got.shape} vs torch {ref.shape}")
    diff = float(np.max(np.abs(got - ref)))
    return diff, diff / max(float(np.max(np.abs(ref))), 1e-12)


def main(argv: list[str] | None = None) -> int:
    """CLI: export architectures and check them against torch."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--exporter", choices=EXPORTERS, default="legacy")
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of ARCHS")
    ap.add_argument("--dynamic", action="store_true", help="dynamic batch dimension")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-3, help="max relative error for OK")
    args = ap.parse_args(argv)

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    failures = 0
    print(f"{'arch':22s} {'size_MB':>8s} {'max_abs':>10s} {'rel_err':>10s} {'export_s':>9s}  status")
    for arch in archs:
        out = args.out_dir / f"{arch}.onnx"
        t0 = time.perf_counter()
        try:
            export(arch, out, args.exporter, args.dynamic, args.size, args.seed)
            secs = time.perf_counter() - t0
            diff, rel = ort_diff(arch, out, args.size, args.seed, batch=2 if args.dynamic else 1)
            ok = rel < args.tol
            status = "OK" if ok else "MISMATCH"
            print(f"{arch:22s} {file_size(out) / 2**20:8.2f} {diff:10.3e} {rel:10.3e} {secs:9.2f}  {status}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - report and continue
            ok = False
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"{arch:22s} {'-':>8s} {'-':>10s} {'-':>10s} {time.perf_counter() - t0:9.2f}  FAIL {msg}",
                  flush=True)
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
