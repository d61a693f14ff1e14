"""Text for people: the summaries and tables the commands print (the reports stay JSON)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxprune.pipeline.report import file_entry, tool

if TYPE_CHECKING:
    from onnxprune.measure.evaluate import Evaluation
    from onnxprune.training.finetune import FinetuneResult
    from onnxprune.tuning.sensitivity import Sensitivity

__all__ = ["format_summary", "format_groups", "format_evaluation", "format_sensitivity", "format_epochs",
           "summary_document", "plural", "format_bytes"]

#: The measured example the "not calibrated" line quotes (README quick start: --ratio 0.5 without and with
#: --calib models/mnist_calib.npz, evaluated on models/mnist_val.npz).
CALIB_EXAMPLE = "bundled MNIST model at --ratio 0.5: 9.7 % -> 96.7 %"


def _human(n: float) -> str:
    """Counts (parameters, MACs) in decimal units: 9.35M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_bytes(n: float) -> str:
    """Sizes in binary units with their names: 313538 -> '306.2 KiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 group``, ``2 groups``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _quantized_params(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The parameters by storage type, for quantized models (int8 and int4 apart from float)."""
    b, a = before.get("params_by_type") or {}, after.get("params_by_type") or {}
    if not b and not a:
        return ""
    b = b or {"float": before.get("params", 0)}
    kinds = sorted(set(b) | set(a), key=lambda k: (k == "float", k))
    return "; " + ", ".join(f"{k} {_human(b.get(k, 0))} -> {_human(a.get(k, 0))}" for k in kinds)


def _quantization_line(entry: dict[str, Any]) -> str:
    """``quantized: ...``: the quantizer, and the float-pruned and quantized accuracy (or fidelity)."""
    o = entry["options"]
    how = ("int8 static QDQ, per-channel weights, "
           f"{plural(o.get('calibration_samples', 0), 'calibration sample')}" if o["mode"] == "static"
           else "int8 dynamic (weights int8, activations at run time)")
    line = f"quantized: {how}; checker ok, onnxruntime ok"
    lat = entry.get("latency")
    if lat:
        line += (f"; latency {lat['ms_float_pruned']:.2f} ms (float pruned) -> {lat['ms_quantized']:.2f} ms "
                 f"({lat['ratio']:.2f}x, onnxruntime CPU, 1 thread)")
    f, q = entry.get("float_pruned"), entry.get("quantized")
    if f and q:
        if f.get("accuracy") is not None:
            line += f"; accuracy {f['accuracy']:.4f} (float pruned) -> {q['accuracy']:.4f} (quantized)"
        else:
            line += f"; cosine to the original {f['cosine']:.4f} (float pruned) -> {q['cosine']:.4f} (quantized)"
    return line


def format_summary(report: dict[str, Any]) -> str:
    """The short human summary printed to stderr after a prune."""
    b, a = report["before"], report["after"]
    groups = report["groups"]
    pruned = sum(1 for g in groups if g["kept"] < g["size"])
    blocked = sum(1 for g in groups if g["blocked"])
    lines = [
        f"groups: {len(groups)} found, {pruned} pruned, {blocked} blocked",
        f"params: {_human(b['params'])} -> {_human(a['params'])} ({_ratio(b['params'], a['params'])}"
        f"{_quantized_params(b, a)})",
        f"MACs:   {_human(b['macs'])} -> {_human(a['macs'])} ({_ratio(b['macs'], a['macs'])})",
        f"size:   {format_bytes(b['bytes'])} -> {format_bytes(a['bytes'])} ({_ratio(b['bytes'], a['bytes'])})",
    ]
    if report.get("latency"):
        lat = report["latency"]
        where = lat.get("provider", "CPUExecutionProvider").removesuffix("ExecutionProvider")
        lines.append(f"latency: {lat['ms_original']:.2f} ms -> {lat['ms_pruned']:.2f} ms ({lat['ratio']:.3f}x, "
                     f"onnxruntime {where}, {plural(lat['threads'], 'thread')})")
    if report.get("training"):
        lines.append(_training_line(report["training"]))
    if report.get("evaluation"):
        before, after = report["evaluation"]["before"], report["evaluation"]["after"]
        if before.get("accuracy") is not None:
            lines.append(f"accuracy: {before['accuracy']:.4f} -> {after['accuracy']:.4f} "
                         f"({after['samples']} samples)")
        lines.append(f"fidelity: top-1 agreement {after['agreement']:.4f}, cosine {after['cosine']:.4f}, "
                     f"relative error {after['rel_error']:.3g}")
    if report.get("quantization"):
        lines.append(_quantization_line(report["quantization"]))
    v = report.get("verification")
    if v and v.get("mask_equivalent") is None:
        why = "training" if report.get("training") else "recovery"
        lines.append(f"verified: checker ok, onnxruntime ok ({why} changed weights: mask equivalence not "
                     "applicable)")
    elif v:
        lines.append(f"verified: checker ok, onnxruntime ok, mask-equivalent "
                     f"(max relative error {v['max_rel_error']:.2g})")
    else:
        lines.append("verification skipped (--no-verify)")
    return "\n".join(lines + _not_established(report.get("established")))


def _not_established(done: dict[str, Any] | None) -> list[str]:
    """One line for each thing a prune run did not establish, and how to establish it."""
    if not done:
        return []
    lines = []
    if not done.get("accuracy"):
        lines.append("onnxprune: note: accuracy not measured (verification proves the rewrite only): "
                     "--eval DATA measures it")
    if not done.get("calibrated"):
        lines.append(f"onnxprune: note: not calibrated: --calib DATA usually recovers much of the accuracy "
                     f"({CALIB_EXAMPLE})")
    return lines


def _ratio(before: float, after: float) -> str:
    return f"{(after / before if before else 1.0):.3f}x"


def _training_line(t: dict[str, Any]) -> str:
    """One line on a training schedule: steps kept and why it stopped."""
    steps = t.get("steps", [])
    kept = sum(1 for s in steps if s["accepted"])
    planned = t.get("planned_steps", len(steps))
    line = f"{t.get('schedule', 'training')}: {kept} of {plural(planned, 'step')} kept"
    rejected = next((s for s in steps if not s["accepted"]), None)
    if rejected is not None:
        line += (f" (stopped at step {rejected['step']}: metric {rejected['metric']:.4f} < kappa {t['kappa']} x "
                 f"baseline {t['baseline']:.4f})")
    return line


def format_groups(rows: list[dict[str, Any]], total_macs: int) -> str:
    """The table ``onnxprune inspect`` prints."""
    header = f"{'group':>5} {'kind':>8} {'size':>6} {'MACs':>9} {'share':>6} {'params':>9}  status / created by"
    lines = [header, "-" * len(header)]
    for r in rows:
        share = r["macs"] / total_macs if total_macs else 0.0
        status = f"BLOCKED: {r['blocked']}" if r["blocked"] else ("prunable" if r["size"] > 1 else "single channel")
        src = ", ".join(r["sources"][:3]) + (f" (+{len(r['sources']) - 3})" if len(r["sources"]) > 3 else "")
        lines.append(f"{r['id']:>5} {r.get('kind', ''):>8} {r['size']:>6} {_human(r['macs']):>9} {share:>6.1%} "
                     f"{_human(r['params']):>9}"
                     f"  {status}  [{src}]")
    prunable = [r for r in rows if not r["blocked"] and r["size"] > 1]
    blocked_macs = sum(r["macs"] for r in rows if r["blocked"])
    lines.append("-" * len(header))
    lines.append(f"{plural(len(rows), 'group')}: {len(prunable)} prunable, {len(rows) - len(prunable)} not; "
                 f"total MACs {_human(total_macs)}; MACs touching blocked groups "
                 f"{(blocked_macs / total_macs if total_macs else 0):.1%}")
    return "\n".join(lines)


def format_evaluation(e: Evaluation, reference_accuracy: float | None = None) -> str:
    """One line per measure of an :class:`~onnxprune.measure.evaluate.Evaluation` (and the reference's own
    accuracy on the same samples, where given)."""
    lines = [f"samples: {e.samples}"]
    if e.accuracy is not None:
        lines.append(f"top-1 accuracy: {e.accuracy:.4f}")
    if reference_accuracy is not None:
        lines.append(f"reference top-1 accuracy: {reference_accuracy:.4f}")
    if e.agreement is not None:
        lines.append(f"top-1 agreement with reference: {e.agreement:.4f}")
        lines.append(f"cosine similarity to reference: {e.cosine:.4f}")
        lines.append(f"relative error to reference: {e.rel_error:.4g}")
    return "\n".join(lines)


def summary_document(report: dict[str, Any], plan_path: Path | None = None, report_path: Path | None = None
                     ) -> dict[str, Any]:
    """The summary as one JSON-ready document (``--json``) for pipeline steps."""
    groups = report["groups"]
    latency = report.get("latency")
    return {
        "tool": report["tool"],
        "command": "prune",
        "input": report.get("input"),
        "output": report.get("output"),
        "plan": str(plan_path) if plan_path is not None else None,
        "report": str(report_path) if report_path is not None else None,
        "before": report["before"],
        "after": report["after"],
        "macs_kept": report["macs_kept"],
        "params_kept": report["params_kept"],
        "groups": {"found": len(groups), "pruned": sum(1 for g in groups if g["kept"] < g["size"]),
                   "blocked": sum(1 for g in groups if g["blocked"])},
        "verification": report.get("verification"),
        "evaluation": report.get("evaluation"),
        "latency": {k: v for k, v in latency.items() if k != "candidates"} if latency else None,
        "established": report.get("established"),
        "options": report["options"],
    }


def evaluation_document(model: Path, data: Path, result: Evaluation, reference: Path | None,
                        reference_eval: Evaluation | None, classes: dict[str, int] | None = None
                        ) -> dict[str, Any]:
    """``onnxprune eval --json``: the common head (tool, command, input) and the measures at the top level;
    ``reference`` names the reference model and its own accuracy."""
    ref = None
    if reference is not None:
        ref = {**file_entry(reference),
               "accuracy": reference_eval.accuracy if reference_eval is not None else None}
    return {"tool": tool(), "command": "eval", "input": file_entry(model), "output": None, "data": str(data),
            **result.to_dict(), "reference": ref, **({"classes": classes} if classes is not None else {})}


def format_sensitivity(result: Sensitivity) -> str:
    """The table ``onnxprune analyze`` prints: agreement per tried fraction and the recommended ratio."""
    head = "".join(f"{f:>10.2f}" for f in result.fractions)
    timed = result.latency is not None
    lat_head, lat_sub = (f" {'latency':>7}", f" {'share':>7}") if timed else ("", "")
    lines = [f"{'group':>5} {'size':>6} {'MACs':>7}{lat_head} {head}  {'ratio':>6}  created by",
             f"{'':>5} {'':>6} {'share':>7}{lat_sub}  (per fraction: top-1 agreement measured / input energy removed)"]
    for r in result.rows:
        if "curve" not in r:
            continue
        cells = "".join(f"{p['agreement']:>5.2f}/{p['energy_lost']:<3.2f}" for p in r["curve"])
        lat = "" if not timed else (f" {r['latency_share']:>7.1%}" if r.get("latency_share") is not None
                                    else f" {'-':>7}")
        lines.append(f"{r['id']:>5} {r['size']:>6} {r['macs_share']:>7.1%}{lat} {cells}  "
                     f"{r['recommended_ratio']:>6.2f}  {', '.join(r['sources'][:2])}")
    skipped = sum(1 for r in result.rows if "curve" not in r)
    if skipped:
        lines.append(f"({plural(skipped, 'group')} not prunable: see onnxprune inspect)")
    if result.latency is not None:
        timing = result.latency
        untimed = len(timing["groups_not_timed"])
        lines.append(f"(latency share: time saved when the group alone keeps half its channels; onnxruntime "
                     f"{timing['provider'].removesuffix('ExecutionProvider')}, "
                     f"{plural(timing['threads'], 'thread')}, {timing['ms_original']:.2f} ms"
                     + (f"; {plural(untimed, 'group')} not timed: -)" if untimed else ")"))
    return "\n".join(lines)


def format_epochs(result: FinetuneResult) -> list[str]:
    """One line per fine-tuning epoch: loss and the validation measures."""
    lines = []
    for h in result.history:
        e = h["eval"] or {}
        parts = [f"epoch {h['epoch']}"]
        if h["loss"] is not None:
            parts.append(f"loss {h['loss']:.4f}")
        for key in ("accuracy", "agreement", "cosine"):
            if e.get(key) is not None:
                parts.append(f"{key} {e[key]:.4f}")
        lines.append("  " + ", ".join(parts))
    return lines
