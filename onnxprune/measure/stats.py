"""Reports: model statistics before and after, a row per group, and the human summaries."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.core.graph import light_model
from onnxprune.core.modelio import _data_bytes
from onnxprune.measure.macs import count_macs, count_params

__all__ = ["ModelStats", "model_stats", "group_rows", "format_summary", "format_groups", "format_evaluation",
           "format_sensitivity", "summary_document"]


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    bytes: int
    macs_per_node: dict[str, int]

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes}


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> ModelStats:
    macs, per_node = count_macs(model, input_shapes)
    size = _data_bytes(model) + light_model(model).ByteSize()  # ByteSize() of the whole model serializes it
    return ModelStats(count_params(model), macs, size, per_node)


def group_rows(analysis: Analysis, removed: dict[int, np.ndarray], macs_per_node: dict[str, int]) -> list[dict]:
    """One row per group: size, kept, blocked reason, creating nodes, and the MACs of the nodes it touches."""
    graph = analysis.graph
    params: dict[int, int] = {}
    for ref in analysis.weights:
        value = graph.const_tensor(ref.name)
        per_row = int(np.prod(value.dims)) // max(len(ref.atoms), 1) if value is not None else 0
        gids, counts = np.unique(analysis.unit_group[ref.atoms], return_counts=True)
        for gid, n in zip(gids, counts):
            params[int(gid)] = params.get(int(gid), 0) + per_row * int(n)
    rows = []
    for g in analysis.groups:
        lost = len(removed.get(g.id, ()))
        rows.append({
            "id": g.id,
            "size": g.size,
            "kept": g.size - lost,
            "blocked": g.blocked,
            "sources": g.sources,
            "macs": sum(macs_per_node.get(graph.label(n), 0) for n in g.nodes),
            "params": params.get(g.id, 0),
        })
    return rows


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_summary(report: dict) -> str:
    """The short human summary printed to stderr after a prune."""
    b, a = report["before"], report["after"]
    groups = report["groups"]
    pruned = sum(1 for g in groups if g["kept"] < g["size"])
    blocked = sum(1 for g in groups if g["blocked"])
    ratio = lambda x, y: f"{(y / x if x else 1.0):.3f}x"  # noqa: E731
    lines = [
        f"groups: {len(groups)} found, {pruned} pruned, {blocked} blocked",
        f"params: {_human(b['params'])} -> {_human(a['params'])} ({ratio(b['params'], a['params'])})",
        f"MACs:   {_human(b['macs'])} -> {_human(a['macs'])} ({ratio(b['macs'], a['macs'])})",
        f"size:   {_human(b['bytes'])}B -> {_human(a['bytes'])}B ({ratio(b['bytes'], a['bytes'])})",
    ]
    if report.get("latency"):
        lat = report["latency"]
        where = lat.get("provider", "CPUExecutionProvider").removesuffix("ExecutionProvider")
        lines.append(f"latency: {lat['ms_original']:.2f} ms -> {lat['ms_pruned']:.2f} ms ({lat['ratio']:.3f}x, "
                     f"onnxruntime {where}, {lat['threads']} thread{'s' if lat['threads'] != 1 else ''})")
    if report.get("training"):
        lines.append(_training_line(report["training"]))
    if report.get("evaluation"):
        before, after = report["evaluation"]["before"], report["evaluation"]["after"]
        if before.get("accuracy") is not None:
            lines.append(f"accuracy: {before['accuracy']:.4f} -> {after['accuracy']:.4f} "
                         f"({after['samples']} samples)")
        lines.append(f"fidelity: top-1 agreement {after['agreement']:.4f}, cosine {after['cosine']:.4f}, "
                     f"relative error {after['rel_error']:.3g}")
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
    return "\n".join(lines)


def _training_line(t: dict) -> str:
    """One line on a training schedule: steps kept and why it stopped."""
    steps = t.get("steps", [])
    kept = sum(1 for s in steps if s["accepted"])
    line = f"{t.get('schedule', 'training')}: {kept} of {t.get('planned_steps', len(steps))} steps kept"
    rejected = next((s for s in steps if not s["accepted"]), None)
    if rejected is not None:
        line += (f" (stopped at step {rejected['step']}: metric {rejected['metric']:.4f} < kappa {t['kappa']} x "
                 f"baseline {t['baseline']:.4f})")
    return line


def format_groups(rows: list[dict], total_macs: int) -> str:
    """The table ``onnxprune inspect`` prints."""
    header = f"{'group':>5} {'size':>6} {'MACs':>9} {'share':>6} {'params':>9}  status / created by"
    lines = [header, "-" * len(header)]
    for r in rows:
        share = r["macs"] / total_macs if total_macs else 0.0
        status = f"BLOCKED: {r['blocked']}" if r["blocked"] else ("prunable" if r["size"] > 1 else "single channel")
        src = ", ".join(r["sources"][:3]) + (f" (+{len(r['sources']) - 3})" if len(r["sources"]) > 3 else "")
        lines.append(f"{r['id']:>5} {r['size']:>6} {_human(r['macs']):>9} {share:>6.1%} {_human(r['params']):>9}"
                     f"  {status}  [{src}]")
    prunable = [r for r in rows if not r["blocked"] and r["size"] > 1]
    blocked_macs = sum(r["macs"] for r in rows if r["blocked"])
    lines.append("-" * len(header))
    lines.append(f"{len(rows)} groups: {len(prunable)} prunable, {len(rows) - len(prunable)} not; "
                 f"total MACs {_human(total_macs)}; MACs touching blocked groups "
                 f"{(blocked_macs / total_macs if total_macs else 0):.1%}")
    return "\n".join(lines)


def format_evaluation(e) -> str:
    """One line per measure of an :class:`~onnxprune.measure.evaluate.Evaluation`."""
    lines = [f"samples: {e.samples}"]
    if e.accuracy is not None:
        lines.append(f"top-1 accuracy: {e.accuracy:.4f}")
    if e.agreement is not None:
        lines.append(f"top-1 agreement with reference: {e.agreement:.4f}")
        lines.append(f"cosine similarity to reference: {e.cosine:.4f}")
        lines.append(f"relative error to reference: {e.rel_error:.4g}")
    return "\n".join(lines)


def summary_document(report: dict, plan_path=None, report_path=None) -> dict:
    """The summary as one JSON-ready document (``--json``) for pipeline steps."""
    groups = report["groups"]
    return {
        "tool": report["tool"],
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
        "options": report["options"],
    }


def format_sensitivity(result) -> str:
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
        lines.append(f"({skipped} groups not prunable: see onnxprune inspect)")
    if timed:
        lat = result.latency
        lines.append(f"(latency share: time saved when the group alone keeps half its channels; onnxruntime "
                     f"{lat['provider'].removesuffix('ExecutionProvider')}, {lat['threads']} thread, "
                     f"{lat['ms_original']:.2f} ms; {len(lat['groups_not_timed'])} groups not timed: -)")
    return "\n".join(lines)
