"""onnxprune beside its two peers on the small random-weight transformers of ``tools/transformer_models.py``.

What it measures, for every architecture x export form (``<arch>.<form>.onnx`` in ``--models-dir``):

* **onnxprune** (``python -m onnxprune.cli FILE -o OUT --report R.json -q``, one subprocess per run) at
  ``--ratio 0.5`` (every kind of group cut: heads, MLP, hidden width) and at ``--ratio 0.5 --hidden-ratio 0``
  (hidden width left whole): exit code (0 ok, 1 error, 3 verification failed) and ``macs_kept`` of its report.
* **onnxsim** 0.8.1 (the ONNX-native peer, a benchmark-only dependency): ``onnxsim.apply_structured_pruning``
  then ``onnxsim.apply_attention_head_pruning``, both at sparsity 0.5: whether it raised or left the model
  unchanged (declined), whether the result loads and runs in onnxruntime (CPU, seeded random inputs: normal
  floats, int64 ids in [0, 2)), and the MACs kept, counted by onnxprune's own counter
  (``onnxprune.measure.macs.count_macs`` on ``static_input_shapes`` of the original: the definition of the
  ``macs_kept`` in onnxprune's report, so both ONNX columns share one definition).
* **Torch-Pruning** 1.6.1 (PyTorch only) on the torch module ``transformer_models.build(arch)`` returns, after
  its own recipes (``examples/transformers/prune_hf_*.py``, ``examples/LLMs/prune_llm.py``,
  ``examples/torchvision_models/torchvision_pruning.py``): ``tp.pruner.MetaPruner`` with
  ``GroupMagnitudeImportance(p=2)``, ``pruning_ratio=0.5`` (MLP and hidden width), local (uniform) ratios,
  ``num_heads`` for every q/k/v projection (k/v with the KV head count under GQA), ``prune_num_heads=True``,
  ``prune_head_dims=False``, ``head_pruning_ratio=0.5``, the output layer ignored, every parameter made
  trainable first (so frozen position tables are traced), Swin's patch merging pruned by the recipe's custom
  pruner, and the attention modules' head counts updated afterwards. MACs kept are
  ``tp.utils.count_ops_and_params`` after / before (its own counter, on ``example_inputs(arch)``: batch 1,
  sequence 16), and the pruned module is run once.

Run (offline, under two minutes on 2 cores; the exports come from
``python tools/transformer_models.py --out-dir /tmp/tf``)::

    python tools/bench_transformers.py --models-dir /tmp/tf --out tools/results/transformers.md \
        [--archs bert,llama] [--forms legacy,fused] [--jobs 2] [--json results.json]

onnxsim is not a dependency of onnxprune: without it (``pip install onnxsim==0.8.1``) its column reads
"not installed".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformer_models as tm  # noqa: E402 - stubs torchvision's compiled ops before transformers loads

from onnxprune.core.graph import static_input_shapes  # noqa: E402
from onnxprune.measure.macs import count_macs  # noqa: E402

RATIO = 0.5
ONNXPRUNE_RUNS: dict[str, list[str]] = {
    "op": ["--ratio", str(RATIO)],
    "op_hidden_whole": ["--ratio", str(RATIO), "--hidden-ratio", "0"],
}
QKV_NAMES: tuple[tuple[str, str, str], ...] = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def _short(exc: BaseException | str, limit: int = 220) -> str:
    """One line of an error message, at most ``limit`` characters, safe inside a Markdown table."""
    if isinstance(exc, str):
        lines = [ln for ln in exc.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split()).replace("|", "/")
    line = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : (Non-zero status code returned while running )?", "", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --------------------------------------------------------------------------- onnxprune


def run_onnxprune(path: Path, extra: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """``python -m onnxprune.cli PATH <extra> -o OUT --report R -q`` in a subprocess: exit code, MACs kept."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="bench_tf_") as tmp:
        out, rep = Path(tmp) / "pruned.onnx", Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "onnxprune.cli", str(path), *extra, "-o", str(out), "--report", str(rep), "-q"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, (proc.stderr or proc.stdout)
        except subprocess.TimeoutExpired:
            rc, err = 124, f"timeout after {timeout:.0f} s"
        res: dict[str, Any] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "macs_kept": None}
        if rc != 0:
            res["error"] = _short(err) if err.strip() else f"exit {rc}"
        if rc == 0 and rep.exists():
            res["macs_kept"] = json.loads(rep.read_text()).get("macs_kept")
    return res


# --------------------------------------------------------------------------- onnxsim


def _random_feeds(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Normal floats, int64 (or other integer) ids in [0, 2), for every real graph input."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shapes[vi.name]).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, shapes[vi.name]).astype(dtype)
    return feeds


def run_in_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[str, list[tuple[int, ...]] | str]:
    """("ok", output shapes), ("load", error) when onnxruntime rejects the model, ("run", error) when it fails."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own rejection is the result
        return "load", _short(exc)
    try:
        outs = sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        return "run", _short(exc)
    return "ok", [tuple(np.shape(o)) for o in outs]


def _macs(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> int | None:
    try:
        total = count_macs(model, shapes)[0]
    except Exception:  # noqa: BLE001 - a model whose shapes do not infer has no MAC count
        return None
    return total or None


def run_onnxsim(path: Path) -> dict[str, Any]:
    """Structured pruning, then attention-head pruning, at 0.5; then onnxruntime and the MACs kept."""
    try:
        import onnxsim
    except ImportError:
        return {"status": "not installed"}
    original = onnx.load(str(path))  # external data (dynamo exports) loaded inline
    shapes = static_input_shapes(original)
    feeds = _random_feeds(original, shapes)
    ref_status, ref_shapes = run_in_ort(original, feeds)
    macs0 = _macs(original, shapes)
    t0 = time.perf_counter()
    try:
        structured = onnxsim.apply_structured_pruning(copy.deepcopy(original), sparsity=RATIO)
        pruned = onnxsim.apply_attention_head_pruning(copy.deepcopy(structured), sparsity=RATIO)
    except Exception as exc:  # noqa: BLE001 - a peer raising is the result
        return {"status": "raised", "error": _short(exc), "seconds": round(time.perf_counter() - t0, 2)}
    res: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2)}
    blob0 = original.SerializeToString()
    res["structured_changed"] = structured.SerializeToString() != blob0
    res["heads_changed"] = pruned.SerializeToString() != structured.SerializeToString()
    macs1 = _macs(pruned, shapes)
    res["macs_kept"] = macs1 / macs0 if macs0 and macs1 is not None else None
    if not (res["structured_changed"] or res["heads_changed"]):
        res.update(status="declined", macs_kept=1.0)
        return res
    status, detail = run_in_ort(pruned, feeds)
    if status == "ok":
        res["status"] = "runs"
        if ref_status == "ok" and detail != ref_shapes:
            res["status"] = "runs, output shape changed"
            res["error"] = f"outputs {ref_shapes} -> {detail}"
        return res
    res["status"] = "ORT rejects" if status == "load" else "ORT run fails"
    res["error"] = str(detail)
    if not res["heads_changed"]:
        res["error"] += " (broken by structured pruning; head pruning changed nothing)"
    elif not res["structured_changed"]:
        res["error"] += " (broken by head pruning; structured pruning changed nothing)"
    else:  # which stage broke it
        alone, _ = run_in_ort(structured, feeds)
        res["error"] += (" (broken by head pruning: structured pruning alone runs)" if alone == "ok"
                         else " (already broken by structured pruning)")
    return res


# --------------------------------------------------------------------------- Torch-Pruning


def _qkv(module: torch.nn.Module) -> tuple[torch.nn.Linear, ...] | None:
    """The q, k, v projections of an attention module that has three separate ones."""
    for names in QKV_NAMES:
        layers = tuple(getattr(module, n, None) for n in names)
        if all(isinstance(layer, torch.nn.Linear) for layer in layers):
            return layers  # type: ignore[return-value]
    return None


def _head_dim(module: torch.nn.Module) -> int:
    return int(getattr(module, "head_dim", None) or module.attention_head_size)


def attention_shapes(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    """(query heads, head dim, hidden width) of every attention block, read from its weights."""
    shapes = []
    for m in model.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            width = m.in_proj_weight.shape[0] // 3
            shapes.append((m.num_heads, width // m.num_heads, int(m.in_proj_weight.shape[1])))
            continue
        qkv = _qkv(m)
        if qkv is not None:
            hd = _head_dim(m)
            shapes.append((qkv[0].out_features // hd, hd, qkv[0].in_features))
            continue
        c_attn = getattr(m, "c_attn", None)  # GPT-2: transformers Conv1D, weight (in, 3 * out)
        if c_attn is not None and hasattr(m, "num_heads"):
            shapes.append((m.num_heads, int(c_attn.weight.shape[1]) // 3 // m.num_heads, int(c_attn.weight.shape[0])))
    return shapes


def _shape_notes(before: list[tuple[int, int, int]], after: list[tuple[int, int, int]]) -> list[str]:
    """Query heads summed over all blocks, head dims where they changed, the first block's hidden width."""
    if not before or len(before) != len(after):
        return []
    notes = [f"heads {sum(b[0] for b in before)}→{sum(a[0] for a in after)} (all blocks)"]
    dims0, dims1 = sorted({b[1] for b in before}), sorted({a[1] for a in after})
    if dims0 != dims1:
        notes.append(f"head dim {'/'.join(map(str, dims0))}→{'/'.join(map(str, dims1))}")
    notes.append(f"hidden {before[0][2]}→{after[0][2]} (first block)")
    return notes


def _swin_patch_merging_pruner(tp: Any) -> tuple[type, Any]:
    """Torch-Pruning's custom pruner for Swin patch merging (examples/transformers/prune_hf_swin.py), reading the
    merged width from the LayerNorm (transformers 5 no longer stores ``dim``)."""
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    class SwinPatchMergingPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer: torch.nn.Module, idxs: list[int]) -> torch.nn.Module:
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer: torch.nn.Module, idxs: list[int]) -> torch.nn.Module:
            dim = self.get_in_channels(layer)
            repeated = [i + k * dim for k in range(4) for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, repeated)
            tp.prune_layernorm_out_channels(layer.norm, repeated)
            return layer

        def get_out_channels(self, layer: torch.nn.Module) -> int:
            return layer.reduction.out_features

        def get_in_channels(self, layer: torch.nn.Module) -> int:
            return layer.norm.normalized_shape[0] // 4

    return SwinPatchMerging, SwinPatchMergingPruner()


def _fix_attention_attributes(model: torch.nn.Module) -> None:
    """After pruning: head counts and widths that the attention modules' forward reads (the recipes' last step)."""
    for m in model.modules():
        qkv = _qkv(m)
        if qkv is None:
            continue
        q, k, _ = qkv
        heads = q.out_features // _head_dim(m)
        for attr in ("num_attention_heads", "num_heads"):
            if hasattr(m, attr):
                setattr(m, attr, heads)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features
        if hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = q.out_features // k.out_features
    inner = getattr(model, "model", model)
    if hasattr(inner, "hidden_dim") and hasattr(inner, "conv_proj"):  # torchvision VisionTransformer
        inner.hidden_dim = inner.conv_proj.out_channels


def run_torch_pruning(arch: str) -> dict[str, Any]:
    """Prune ``transformer_models.build(arch)`` with Torch-Pruning at 0.5 (heads, MLP, hidden width)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"status": "not installed"}
    res: dict[str, Any] = {"status": "failed", "macs_kept": None}
    t0 = time.perf_counter()
    try:
        model = tm.build(arch)
        x = tm.example_inputs(arch)
        with torch.no_grad():
            y0 = model(*x)
        shape0 = attention_shapes(model)
        macs0, params0 = tp.utils.count_ops_and_params(model, x)
        for p in model.parameters():
            p.requires_grad_(True)
        num_heads: dict[torch.nn.Module, int] = {}
        for m in model.modules():
            qkv = _qkv(m)
            if qkv is not None:
                for layer in qkv:
                    num_heads[layer] = layer.out_features // _head_dim(m)
        inner = model.model
        outputs = (getattr(inner, "classifier", None), getattr(inner, "lm_head", None),
                   getattr(getattr(inner, "heads", None), "head", None))
        extra: dict[str, Any] = {}
        if arch == "swin":
            merging, pruner_fn = _swin_patch_merging_pruner(tp)
            extra = {"customized_pruners": {merging: pruner_fn},
                     "root_module_types": (torch.nn.Linear, torch.nn.LayerNorm, merging)}
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=x, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO, global_pruning=False,
            ignored_layers=[m for m in outputs if isinstance(m, torch.nn.Module)],
            num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=RATIO,
            **extra,
        )
        pruner.step()
        _fix_attention_attributes(model)
        res["status"] = "pruned, fails to run"
        with torch.no_grad():
            y1 = model(*x)
        macs1, params1 = tp.utils.count_ops_and_params(model, x)
        res.update(status="runs", macs_before=int(macs0), macs_after=int(macs1), macs_kept=macs1 / macs0,
                   params_kept=params1 / params0)
        notes = _shape_notes(shape0, attention_shapes(model))
        if params1 == params0:
            res["nothing_pruned"] = True
            kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ == "Conv1D"})
            notes.append("nothing pruned" + (f" ({', '.join(kinds)} layers: a type Torch-Pruning neither prunes "
                                             "nor counts)" if kinds else ""))
        if tuple(y1.shape) != tuple(y0.shape):
            res["output_changed"] = True
            notes.append(f"output {tuple(y0.shape)}→{tuple(y1.shape)}")
        res["note"] = ", ".join(notes)
    except Exception as exc:  # noqa: BLE001 - a failure is the result: one short phrase
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})" if tb else ""
        res["error"] = _short(exc, 120) + where
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


# --------------------------------------------------------------------------- report


def _versions() -> str:
    out = []
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "onnxsim", "torch-pruning"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def _git_revision() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "onnxprune")
    return rev + (" (with uncommitted changes under onnxprune/)" if dirty else "")


class Notes:
    """Numbered footnotes for the table cells; one note per distinct message, naming every cell that cites it."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}

    def add(self, label: str, text: str) -> str:
        labels = self.texts.setdefault(text, [])
        labels.append(label)
        return f" [{list(self.texts).index(text) + 1}]"

    @property
    def lines(self) -> list[str]:
        return [f"{i}. {'; '.join(labels)}: {text}" for i, (text, labels) in enumerate(self.texts.items(), 1)]


def _op_cell(r: dict[str, Any], label: str, notes: Notes) -> str:
    if r["rc"] == 0 and r.get("macs_kept") is not None:
        return f"{r['macs_kept']:.3f}"
    return f"exit {r['rc']}" + notes.add(label, r.get("error", ""))


def _sim_cell(r: dict[str, Any], label: str, notes: Notes) -> str:
    macs = f"{r['macs_kept']:.3f}" if r.get("macs_kept") is not None else "—"
    status = r["status"]
    if status == "not installed":
        return status
    if status == "raised":
        return "raised" + notes.add(label, r["error"])
    if status == "declined":
        return f"declined, {macs}"
    if status == "runs":
        return f"runs, {macs}"
    return f"**{status}** ({macs})" + notes.add(label, r.get("error", ""))


def _tp_cell(r: dict[str, Any], arch: str, notes: Notes) -> str:
    if r["status"] == "not installed":
        return "not installed"
    if r["status"] == "runs":
        flags = [text for key, text in (("nothing_pruned", "nothing pruned"),
                                        ("output_changed", "output shape changed")) if r.get(key)]
        return f"runs, {r['macs_kept']:.3f}" + (f" ({', '.join(flags)})" if flags else "")
    return f"**{r['status']}**" + notes.add(f"{arch}, Torch-Pruning", r.get("error", ""))


def build_markdown(rows: list[dict[str, Any]], tp_results: dict[str, dict[str, Any]], command: str,
                   wall_s: float) -> str:
    """The side-by-side table, Torch-Pruning's details and the footnotes."""
    notes = Notes()
    sim_version = next((v for v in _versions().split(", ") if v.startswith("onnxsim ")), "onnxsim")
    sim_version = "onnxsim" if sim_version.endswith("not installed") else sim_version
    lines = [
        f"# onnxprune, onnxsim and Torch-Pruning on small random-weight transformers, ratio {RATIO}", "",
        f"Generated by `{command}` ({wall_s:.0f} s wall).", "",
        f"Versions: {_versions()}; onnxprune at {ROOT} git {_git_revision()}.", "",
        "MACs kept = pruned / original. The ONNX columns share onnxprune's counter "
        "(`onnxprune.measure.macs.count_macs` at `static_input_shapes`: batch 1, a dynamic sequence 64); "
        "Torch-Pruning's column is `tp.utils.count_ops_and_params` on the torch module (batch 1, sequence 16), "
        "one value per architecture. onnxprune verifies what it writes (exit 0: checker, onnxruntime, "
        "mask-equivalence); onnxsim's output is checked here by loading and running it in onnxruntime with "
        "random inputs (no accuracy check for any column: the weights are random).", "",
        f"| model | form | onnxprune {RATIO} | onnxprune {RATIO}, hidden whole | {sim_version} structured + heads "
        f"| Torch-Pruning {RATIO} (torch module) |",
        "|---|---|---|---|---|---|",
    ]
    shown: set[str] = set()
    for row in rows:
        arch, form = row["arch"], row["form"]
        label = f"{arch} {form}"
        if row.get("missing"):
            lines.append(f"| {arch} | {form} | missing | missing | missing | |")
            continue
        tp_cell = "″" if arch in shown else _tp_cell(tp_results[arch], arch, notes)
        shown.add(arch)
        lines.append(f"| {arch} | {form} | {_op_cell(row['op'], label + ', onnxprune', notes)} "
                     f"| {_op_cell(row['op_hidden_whole'], label + ', onnxprune hidden whole', notes)} "
                     f"| {_sim_cell(row['onnxsim'], label + ', onnxsim', notes)} | {tp_cell} |")
    lines += ["", "## Torch-Pruning details", "",
              "| model | MACs before | MACs after | MACs kept | params kept | status "
              "| attention shapes |",
              "|---|---|---|---|---|---|---|"]
    for arch, r in tp_results.items():
        if r["status"] == "runs":
            lines.append(f"| {arch} | {r['macs_before']:,} | {r['macs_after']:,} | {r['macs_kept']:.3f} "
                         f"| {r['params_kept']:.3f} | runs | {r.get('note', '')} |")
        else:
            lines.append(f"| {arch} | | | | | {r['status']}: {r.get('error', '')} | |")
    if notes.lines:
        lines += ["", "## Notes", "", *notes.lines]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI: run the three tools on every file, print the table, optionally write it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/tf"),
                    help="exports of tools/transformer_models.py (<arch>.<form>.onnx)")
    ap.add_argument("--archs", default=",".join(tm.ARCHS), help=f"comma-separated subset of {','.join(tm.ARCHS)}")
    ap.add_argument("--forms", default=",".join(tm.FORMS), help="comma-separated subset of legacy,dynamo,fused,opset23")
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    ap.add_argument("--json", type=Path, help="also write the raw records here")
    ap.add_argument("--jobs", type=int, default=2, help="onnxprune subprocesses run at once")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    for a in archs:
        if a not in tm.ARCH_SPECS:
            ap.error(f"unknown arch {a!r}; choose from {', '.join(tm.ARCHS)}")
    for f in forms:
        if f not in tm.FORMS:
            ap.error(f"unknown form {f!r}; choose from {', '.join(tm.FORMS)}")

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    t0 = time.perf_counter()
    print(f"versions: {_versions()}\nonnxprune: {ROOT} git {_git_revision()}", flush=True)
    try:
        import onnxsim  # noqa: F401
    except ImportError:
        print("onnxsim is not installed: its column reads 'not installed' (pip install onnxsim==0.8.1)", flush=True)

    rows: list[dict[str, Any]] = []
    for arch in archs:
        for form in forms:
            if form == "opset23" and arch not in tm.SDPA_ARCHS:
                continue
            path = args.models_dir / f"{arch}.{form}.onnx"
            row: dict[str, Any] = {"arch": arch, "form": form, "file": str(path)}
            if not path.exists():
                row["missing"] = True
                print(f"missing {path}: build it with python tools/transformer_models.py --out-dir "
                      f"{args.models_dir}", flush=True)
            rows.append(row)

    jobs = [(row, key) for row in rows if not row.get("missing") for key in ONNXPRUNE_RUNS]

    def prune(job: tuple[dict[str, Any], str]) -> None:
        row, key = job
        row[key] = run_onnxprune(Path(row["file"]), ONNXPRUNE_RUNS[key])
        r = row[key]
        print(f"onnxprune {row['arch']:12s} {row['form']:7s} {' '.join(ONNXPRUNE_RUNS[key]):28s} exit {r['rc']} "
              f"macs_kept {r['macs_kept']} ({r['seconds']} s) {r.get('error', '')}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(prune, jobs))

    for row in rows:
        if not row.get("missing"):
            row["onnxsim"] = r = run_onnxsim(Path(row["file"]))
            print(f"onnxsim   {row['arch']:12s} {row['form']:7s} {r['status']:28s} macs_kept {r.get('macs_kept')} "
                  f"{r.get('error', '')}", flush=True)

    tp_results: dict[str, dict[str, Any]] = {}
    for arch in archs:
        tp_results[arch] = r = run_torch_pruning(arch)
        print(f"torch-pruning {arch:12s} {r['status']:20s} macs_kept {r.get('macs_kept')} "
              f"{r.get('note', '')}{r.get('error', '')}", flush=True)

    wall = time.perf_counter() - t0
    command = " ".join(["python tools/bench_transformers.py", *(argv if argv is not None else sys.argv[1:])])
    doc = build_markdown(rows, tp_results, command, wall)
    print("\n" + doc)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(doc)
        print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "torch_pruning": tp_results}, indent=1, default=str))
    print(f"total {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
