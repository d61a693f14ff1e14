"""Depth of pruning: onnxprune vs Torch-Pruning on the torchvision test models.

For every architecture in ``tools/torchvision_models.ARCHS`` and both exporters
(``legacy`` TorchScript and ``dynamo``), export the model (random weights,
cached in ``--work``), prune it with the library at ``--ratio`` (verification
on) and compare the fraction of MACs kept with Torch-Pruning's figure from
``tools/results/torch_pruning_baseline.json``.  A row is ``ok`` when onnxprune
keeps at most ``--margin`` (0.05) more of the MACs than Torch-Pruning.

The MAC fraction is re-counted independently of onnxprune's own counter, by
``onnx_tool`` (PyPI ``onnx-tool``, when importable; only its
Conv/ConvTranspose/Gemm/MatMul nodes are summed, and its Conv figure includes
the bias additions) and by ``own``, a small counter in this file over ONNX shape
inference (Conv/ConvTranspose/Gemm/MatMul, no bias adds), which measures the
tensors shape inference leaves unknown in one onnxruntime run.

    python tools/bench_depth.py [--work DIR] [--ratio 0.5] [--archs resnet18,...]
        [--exporters legacy,dynamo] [--counter all|onnx_tool|own]
        [--json tools/results/depth.json]

Also importable: :func:`ensure_export` (used by ``bench_cost.py`` and
``bench_latency.py``) caches exports as ``WORK/<exporter>/<arch>.onnx``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
DEFAULT_BASELINE = TOOLS / "results" / "torch_pruning_baseline.json"
DEFAULT_JSON = TOOLS / "results" / "depth.json"


# ----------------------------------------------------------------------------- exports


def ensure_export(arch: str, work: Path, exporter: str = "legacy", size: int = 224) -> tuple[Path, float | None]:
    """Return ``WORK/<exporter>/<arch>.onnx``, exporting it first unless a finished export exists.

    A ``.ok`` marker is written after a successful export, so an interrupted
    export is redone.  The second element is the export time (None if reused).
    """
    path = work / exporter / f"{arch}.onnx"
    marker = path.with_name(path.name + ".ok")
    if path.exists() and marker.exists():
        return path, None
    import torchvision_models as tvm  # imports torch: only when an export is needed

    path.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    tvm.export(arch, path, exporter=exporter, size=size)
    secs = time.perf_counter() - t0
    marker.write_text(f"{arch} {exporter} size={size}\n")
    return path, secs


# ----------------------------------------------------------------------------- independent MAC counters


def _own_shapes(model: onnx.ModelProto, input_shape: list[int]) -> dict[str, list[int]]:
    """Static shapes of every tensor via onnx shape inference, graph inputs fixed to ``input_shape``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in input_shape:
            shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    # Shape inference needs no float weight values: strip those to keep it cheap (integer
    # initializers stay: they may be Reshape targets and the like).
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in m.graph.initializer}
    for t in m.graph.initializer:
        if t.data_type not in _FLOAT_TYPES:
            continue
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.DEFAULT
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
        elif vi.type.tensor_type.HasField("shape") and len(dims) == 0:
            shapes[vi.name] = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    return shapes


def _ort_shapes(model: onnx.ModelProto, names: list[str], input_shape: list[int]) -> dict[str, list[int]]:
    """Shapes of ``names`` from one onnxruntime run (for tensors shape inference leaves unknown)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    inits = {t.name for t in m.graph.initializer}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {vi.name: np.zeros(input_shape, np.float32) for vi in m.graph.input if vi.name not in inits}
    outs = sess.run(names, feeds)
    return {n: list(v.shape) for n, v in zip(names, outs)}


def macs_own(model: onnx.ModelProto, input_shape: list[int]) -> int:
    """MACs of Conv/ConvTranspose/Gemm/MatMul (no bias adds) from onnx shape inference.

    Tensors whose shapes inference cannot resolve (e.g. behind a Slice with
    computed bounds) are measured in one onnxruntime run instead.
    """
    shapes = _own_shapes(model, input_shape)
    needed = []
    for node in model.graph.node:
        if node.op_type in MAC_OPS:
            for n in (node.input[0], node.output[0]):
                if n not in shapes and n not in needed:
                    needed.append(n)
    if needed:
        shapes.update(_ort_shapes(model, needed, input_shape))
    total = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in MAC_OPS:
            continue
        ins = [shapes.get(n) if n else None for n in node.input]
        out = shapes.get(node.output[0])
        if op == "Conv":
            x, w = ins[0], ins[1]
            if w is None or out is None:
                raise ValueError(f"{op} {node.name}: unknown shape")
            total += int(np.prod(out)) * int(np.prod(w[1:]))  # w[1] is already C_in / group
        elif op == "ConvTranspose":
            x, w = ins[0], ins[1]
            if w is None or x is None:
                raise ValueError(f"{op} {node.name}: unknown shape")
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        else:
            a = ins[0]
            if a is None or out is None:
                raise ValueError(f"{op} {node.name}: unknown shape")
            trans_a = 0
            for at in node.attribute:
                if at.name == "transA":
                    trans_a = at.i
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            total += int(np.prod(out)) * int(k)
    return total


def macs_onnx_tool(model: onnx.ModelProto, input_shape: list[int], input_name: str) -> int:
    """MACs of Conv/ConvTranspose/Gemm/MatMul nodes as profiled by ``onnx_tool`` (includes bias adds)."""
    import onnx_tool

    m = onnx_tool.Model(copy.deepcopy(model))
    g = m.graph
    g.shape_infer({input_name: np.zeros(input_shape, np.float32)})
    g.profile()
    total = 0
    for node in g.nodemap.values():
        if node.op_type in MAC_OPS:
            macs = node.macs
            total += int(macs[0] if isinstance(macs, (list, tuple)) else macs)
    return total


def available_counters(choice: str) -> list[str]:
    """Independent counters to run: ``all`` is onnx_tool (when importable) and own."""
    if choice != "all":
        return [choice]
    try:
        import onnx_tool  # noqa: F401
        return ["onnx_tool", "own"]
    except Exception:  # noqa: BLE001
        return ["own"]


def count_macs(model: onnx.ModelProto, counter: str, input_shape: list[int]) -> int:
    """MACs of ``model`` with the named independent counter."""
    if counter == "onnx_tool":
        inits = {t.name for t in model.graph.initializer}
        input_name = next(vi.name for vi in model.graph.input if vi.name not in inits)
        return macs_onnx_tool(model, input_shape, input_name)
    return macs_own(model, input_shape)


# ----------------------------------------------------------------------------- the bench


def _error(stage: str, exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
    msg = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{stage}: {type(exc).__name__}: {msg}{where}"


def bench_one(arch: str, exporter: str, args: argparse.Namespace, tp_kept: float | None,
              counters: list[str]) -> dict[str, Any]:
    """Export (or reuse), prune, verify and count one architecture/exporter pair."""
    import onnxprune

    row: dict[str, Any] = {
        "arch": arch, "exporter": exporter, "macs_kept": None, "params_kept": None,
        "tp_macs_kept": tp_kept, "diff": None, "status": None, "max_rel_error": None,
        "prune_s": None, "export_s": None, "onnxprune_macs_before": None, "onnxprune_macs_after": None,
        "indep": {}, "indep_max_dev": None, "error": None,
    }
    stage = "export"
    try:
        path, row["export_s"] = ensure_export(arch, args.work, exporter, args.size)
        stage = "load"
        model = onnxprune.load(path)
        stage = "prune"
        t0 = time.perf_counter()
        result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=args.ratio, verify=True))
        row["prune_s"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - report and go on
        row["error"] = _error(stage, exc)
        row["status"] = "FAIL"
        return row
    rep = result.report
    row["macs_kept"] = rep["macs_kept"]
    row["params_kept"] = rep["params_kept"]
    row["onnxprune_macs_before"] = rep["before"]["macs"]
    row["onnxprune_macs_after"] = rep["after"]["macs"]
    row["max_rel_error"] = (rep.get("verification") or {}).get("max_rel_error")
    if tp_kept is not None:
        row["diff"] = rep["macs_kept"] - tp_kept
        row["status"] = "ok" if row["diff"] <= args.margin else "MISS"
    else:
        row["status"] = "n/a"
    shape = [1, 3, args.size, args.size]
    devs = []
    for counter in counters:
        try:
            before = count_macs(model, counter, shape)
            after = count_macs(result.model, counter, shape)
            kept = after / before if before else None
            dev = kept - rep["macs_kept"] if kept is not None else None
            row["indep"][counter] = {"macs_before": before, "macs_after": after, "macs_kept": kept, "dev": dev}
            if dev is not None:
                devs.append(dev)
        except Exception as exc:  # noqa: BLE001
            row["indep"][counter] = {"error": _error(f"count[{counter}]", exc)}
    if devs:
        row["indep_max_dev"] = max(devs, key=abs)
    return row


def _fmt(v: Any, spec: str, width: int) -> str:
    return ("-" if v is None else format(v, spec)).rjust(width)


def print_table(rows: list[dict[str, Any]], margin: float, counters: list[str]) -> None:
    """One line per arch/exporter, then failures and a summary."""
    short = {"onnx_tool": "onnx_tool", "own": "own"}
    head = (f"{'arch':20s} {'exporter':8s} {'onnxprune':>9s} {'TP':>7s} {'diff':>7s} {'<=+' + str(margin):>7s} "
            + "".join(f"{short[c]:>10s}" for c in counters)
            + f" {'max_dev':>8s} {'params':>7s} {'max_rel_err':>11s} {'prune_s':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        indep = "".join(_fmt(r["indep"].get(c, {}).get("macs_kept"), ".4f", 10) for c in counters)
        print(f"{r['arch']:20s} {r['exporter']:8s} {_fmt(r['macs_kept'], '.4f', 9)} "
              f"{_fmt(r['tp_macs_kept'], '.4f', 7)} {_fmt(r['diff'], '+.4f', 7)} {r['status']:>7s} "
              f"{indep} {_fmt(r['indep_max_dev'], '+.1e', 8)} "
              f"{_fmt(r['params_kept'], '.4f', 7)} {_fmt(r['max_rel_error'], '.2e', 11)} "
              f"{_fmt(r['prune_s'], '.2f', 7)}")
    notes = [f"{r['arch']} [{r['exporter']}]: {r['error']}" for r in rows if r["error"]]
    notes += [f"{r['arch']} [{r['exporter']}]: {v['error']}" for r in rows for v in r["indep"].values()
              if "error" in v]
    if notes:
        print("\nerrors:")
        for n in notes:
            print("  " + n)
    done = [r for r in rows if r["status"] in ("ok", "MISS")]
    print(f"\n{sum(r['status'] == 'ok' for r in done)}/{len(done)} within +{margin} of Torch-Pruning; "
          f"{sum(r['status'] == 'MISS' for r in done)} MISS; {sum(bool(r['error']) for r in rows)} prune failures; "
          f"{sum(r['status'] == 'n/a' for r in rows)} without a Torch-Pruning figure")
    print("columns: onnxprune/TP = fraction of MACs kept; diff = onnxprune - TP; "
          + "/".join(counters) + " = MACs kept by the independent counter(s); "
          "max_dev = largest (independent - onnxprune); onnx_tool's Conv includes bias adds")
    # onnx_tool adds the bias additions to Conv, so it runs a little high on depthwise-heavy nets.
    limit = {"own": 1e-3, "onnx_tool": 1e-2}
    big = [r for r in rows if any(abs(v.get("dev") or 0) > limit[c] for c, v in r["indep"].items())]
    for r in big:
        b = {c: v.get("macs_before") for c, v in r["indep"].items()}
        print(f"  note: {r['arch']} [{r['exporter']}] independent count differs by {r['indep_max_dev']:+.4f}: "
              f"onnxprune counts {r['onnxprune_macs_before']} MACs before, independent {b}")


def _git_state() -> dict[str, Any]:
    """Commit and uncommitted changes under onnxprune/ (read-only git commands)."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=TOOLS.parent, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    return {"head": git("rev-parse", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "onnxprune").splitlines()}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("onnx", "onnxruntime", "numpy", "onnxprune", "onnx-tool", "torch", "torchvision"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    import torchvision_models as tvm  # for ARCHS / EXPORTERS (imports torch)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="export cache dir [default: a temp dir]")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--archs", default=",".join(tvm.ARCHS), help="comma-separated subset of ARCHS")
    ap.add_argument("--exporters", default=",".join(tvm.EXPORTERS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--margin", type=float, default=0.05, help="ok if onnxprune macs_kept <= TP's + margin")
    ap.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="Torch-Pruning results JSON")
    ap.add_argument("--counter", choices=("all", "onnx_tool", "own"), default="all",
                    help="independent MAC counter(s) [all: onnx_tool if importable, and own]")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results JSON [default: {DEFAULT_JSON}]")
    args = ap.parse_args(argv)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune_depth_")
        args.work = Path(tmp.name)
    baseline = json.loads(args.baseline.read_text())
    counters = available_counters(args.counter)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    print(f"work={args.work} ratio={args.ratio} independent counters={','.join(counters)}", flush=True)

    rows = []
    t_all = time.perf_counter()
    for arch in archs:
        tp = baseline.get(arch, {}).get("macs_kept")
        for exporter in exporters:
            row = bench_one(arch, exporter, args, tp, counters)
            rows.append(row)
            ex = f"export {row['export_s']:.1f}s, " if row["export_s"] else ""
            print(f"  {arch} [{exporter}]: {ex}{row['status']}"
                  + (f" {row['error']}" if row["error"] else ""), file=sys.stderr, flush=True)
    print()
    print_table(rows, args.margin, counters)
    print(f"total {time.perf_counter() - t_all:.0f}s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "meta": {"ratio": args.ratio, "margin": args.margin, "size": args.size,
                     "independent_counters": counters, "baseline": str(args.baseline),
                     "versions": _versions(), "git": _git_state(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S")},
            "rows": rows,
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
