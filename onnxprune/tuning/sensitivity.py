"""Sensitivity analysis: how much each channel group matters. For every prunable group and fraction, remove
that fraction of the group alone (lowest scores first) and (1) estimate the loss from channel statistics over
the calibration samples: the share of the consumers' input energy the removed channels carry; (2) measure it
on a probe subset: the model with that group cut against the original (accuracy where there are labels, top-1
agreement and relative error always). Also the share of MACs each group touches, and a recommended per-group
ratio: the deepest tried fraction whose measured loss stays within the tolerance."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis
from onnxprune.analysis.dependency import analyze as find_groups
from onnxprune.core.graph import Graph, static_input_shapes
from onnxprune.core.progress import Progress
from onnxprune.measure.calibrate import collect, consumer_inputs, model_batches
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import CPU, Session
from onnxprune.measure.stats import group_rows, model_stats
from onnxprune.planning.criteria import consumer_columns, group_sums, score
from onnxprune.planning.planner import PlanConfig, choose, kept_count
from onnxprune.rewriting.rewrite import apply_keep
from onnxprune.tuning.latency import MIN_MS, latency_table, measurability

__all__ = ["Sensitivity", "sensitivity", "plot", "group_label", "short_name"]


@dataclass
class Sensitivity:
    fractions: list[float]
    rows: list[dict]  # per group: id, size, macs share, blocked, and per fraction: agreement, rel_error, accuracy
    baseline_accuracy: float | None
    timing: dict | None = None  # how the latency columns were measured, or why not (see add_latency)
    tolerance: float | None = None  # the loss a recommended ratio may cost
    data: str | None = None  # where the samples came from ("random": seeded random inputs)

    @property
    def latency(self) -> dict | None:
        """How the latency columns were measured; ``None`` when not timed or too fast to time reliably."""
        return self.timing if self.timing is not None and self.timing.get("measurable", True) else None

    def to_dict(self) -> dict:
        return {"fractions": self.fractions, "baseline_accuracy": self.baseline_accuracy, "data": self.data,
                "tolerance": self.tolerance, "latency": self.timing, "groups": self.rows}

    def add_latency(self, model: onnx.ModelProto, *, provider: str = CPU, max_groups: int | None = 48,
                    rounds: int = 5, min_ms: float = MIN_MS) -> str | None:
        """Add each prunable group's latency share (the latency saved when it alone keeps half its channels,
        as a fraction of the model's) and its latency at every kept fraction (``1 - fractions``).

        Only the ``max_groups`` groups touching the most MACs are timed (``None``: all); the others get
        ``latency_share: null``. Each group costs one rewrite and one session per fraction, timed with the
        original over at least ``rounds`` interleaved rounds on one thread, more (up to ``4 * rounds``) until
        the share is known within :data:`~onnxprune.tuning.latency.RESOLUTION`; a share still unsure then is
        ``null`` too (``latency.unstable``). A model too fast to time reliably (see :func:`measurability`) gets
        no shares: the reason is returned and recorded (``latency.measurable: false``)."""
        curves = sorted((r for r in self.rows if "curve" in r), key=lambda r: (-r["macs"], r["id"]))
        check = measurability(model, provider=provider, min_ms=min_ms)
        base = {"provider": provider, "threads": 1, "rounds": rounds, "measurable": check.reason is None,
                "reason": check.reason, "timing_check": check.to_dict()}
        if check.reason is not None:
            for r in curves:
                r["latency_share"] = None
            self.timing = {**base, "ms_original": check.ms, "groups_timed": 0,
                           "groups_not_timed": [r["id"] for r in curves], "unstable": []}
            return check.reason
        chosen = [r["id"] for r in curves[:max_groups]]
        table = latency_table(model, [1.0 - f for f in self.fractions], groups=chosen, provider=provider,
                              rounds=rounds)
        for r in curves:
            row = table.groups.get(r["id"])
            r["latency_share"] = row["share"] if row and row["stable"] else None
            if row:
                r["latency"] = {"kept": table.kept, **{k: v for k, v in row.items() if k != "size"}}
        self.timing = {**base, "ms_original": table.ms_original, "groups_timed": len(table.groups),
                       "groups_not_timed": table.skipped,
                       "unstable": [gid for gid, row in sorted(table.groups.items()) if not row["stable"]]}
        return None


def _outputs(model: onnx.ModelProto, data: Dataset, batch: int, limit: int) -> np.ndarray:
    session = Session(model)
    parts = []
    for feeds, part in model_batches(model, data, batch, limit):
        parts.append(np.asarray(session.run(feeds)[0], dtype=np.float64).reshape(part.stop - part.start, -1))
    return np.concatenate(parts)


def sensitivity(model: onnx.ModelProto, data: Dataset, fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
                criterion: str = "l2", batch_size: int = 32, limit: int = 256, tolerance: float = 0.01,
                probe: int = 32) -> Sensitivity:
    """Per-group sensitivity of ``model``: an estimate from channel statistics over ``limit`` samples (the
    share of the consumers' input energy the removed channels carry) and a measurement on ``probe`` samples
    (the model with that group cut, against the original)."""
    graph = Graph.build(model)
    analysis = find_groups(graph)
    scores = score(analysis, criterion)
    stats = model_stats(model, static_input_shapes(model))
    rows = group_rows(analysis, {}, stats.macs_per_node)
    energy = _energy(model, analysis, data, batch_size, limit)
    reference = _outputs(model, data, batch_size, probe)
    labels = data.labels[:len(reference)] if data.labels is not None else None
    base_acc = float((reference.argmax(1) == labels).mean()) if labels is not None else None
    prunable = [g for g in analysis.groups if g.prunable]
    with Progress("analysing", len(prunable) * len(fractions)) as bar:
        for g in prunable:
            row = rows[g.id]
            row["macs_share"] = row["macs"] / stats.macs if stats.macs else 0.0
            row["curve"] = []
            for f in fractions:
                kept = {g.id: kept_count(g.size, f)}
                removed = {gid: r for gid, r in choose(analysis, scores, PlanConfig(ratio=f), kept).items()
                           if gid == g.id}
                if not removed:
                    row["curve"].append({"fraction": f, "energy_lost": 0.0, "agreement": 1.0, "rel_error": 0.0,
                                         "accuracy": base_acc})
                    bar.advance()
                    continue
                out = _outputs(apply_keep(analysis, analysis.keep_positions(removed)), data, batch_size, probe)
                point = {"fraction": f, "energy_lost": _lost(energy, g.id, removed[g.id]),
                         "agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
                         "rel_error": float(np.linalg.norm(out - reference) / max(np.linalg.norm(reference), 1e-30)),
                         "accuracy": float((out.argmax(1) == labels).mean()) if labels is not None else None}
                row["curve"].append(point)
                bar.advance()
            ok = [p["fraction"] for p in row["curve"]
                  if (p["accuracy"] is not None and base_acc - p["accuracy"] <= tolerance)
                  or (p["accuracy"] is None and 1.0 - p["agreement"] <= tolerance)]
            row["recommended_ratio"] = max(ok, default=0.0)
    for row in rows:
        row.setdefault("macs_share", row["macs"] / stats.macs if stats.macs else 0.0)
    return Sensitivity(list(fractions), rows, base_acc, tolerance=tolerance)


def _energy(model: onnx.ModelProto, analysis: Analysis, data: Dataset, batch_size: int, limit: int
            ) -> dict[int, np.ndarray]:
    """Per group and unit: sum over its consumers of ||W[:, c]||^2 * E[a_c^2] (the input energy it carries)."""
    names = consumer_inputs(analysis)
    stats = collect(model, names, {n: analysis.labels[n].axis for n in names}, data, batch_size, limit,
                    label="measuring channels")
    energy = {g.id: np.zeros(g.size) for g in analysis.groups}
    for atoms, name, column in consumer_columns(analysis, stats):
        group_sums(analysis, atoms, column * stats[name].square / max(stats[name].elements, 1), energy)
    return energy


def _lost(energy: dict[int, np.ndarray], gid: int, removed: np.ndarray) -> float:
    total = float(energy[gid].sum())
    return float(energy[gid][removed].sum()) / total if total > 0 else 0.0


def short_name(name: str, width: int = 24) -> str:
    """A node name shortened for a label: ``/layer2/downsample/downsample.0/Conv`` -> ``layer2/downsample.0``
    (no trailing op type, no scope repeated by the next one, the last two scopes, at most ``width`` characters)."""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z0-9]*(_\d+)?", parts[-1]):
        parts = parts[:-1]
    parts = [p for p, q in zip(parts, parts[1:] + [""]) if not q.startswith(p + ".")]
    short = "/".join(parts[-2:]) or name
    return short if len(short) <= width else "…" + short[-(width - 1):]


def group_label(row: dict) -> str:
    """``id: first node`` for a group row (the id alone where the group has no source node)."""
    sources = row.get("sources") or []
    return f"{row['id']}: {short_name(sources[0])}" if sources else str(row["id"])


def plot(result: Sensitivity, path: Path) -> bool:
    """Write a PNG of the sensitivity curves (needs matplotlib: ``pip install 'onnxprune[plot]'``): per group
    (labelled by its first node) the measured quality against the fraction removed, the recommended ratio
    marked and the tolerance drawn; and the share of MACs and of the latency each group touches."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    _plot_curves(result, left)
    _plot_shares(result, right)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_curves(result: Sensitivity, ax: Any) -> None:
    """Accuracy (with labels) or top-1 agreement per group against the fraction removed; a star at each
    group's recommended ratio, a dashed line at the tolerance."""
    labelled = result.baseline_accuracy is not None
    key, top = ("accuracy", result.baseline_accuracy) if labelled else ("agreement", 1.0)
    for row in (r for r in result.rows if "curve" in r):
        xs = [0.0] + [p["fraction"] for p in row["curve"]]
        ys = [top] + [p[key] for p in row["curve"]]
        line, = ax.plot(xs, ys, marker="o", linewidth=1, label=group_label(row))
        at = xs.index(row["recommended_ratio"]) if row["recommended_ratio"] in xs else 0
        ax.plot([xs[at]], [ys[at]], marker="*", markersize=14, color=line.get_color(), markeredgecolor="black",
                linestyle="none")
    handles, labels = ax.get_legend_handles_labels()
    extra = [ax.plot([], [], marker="*", markersize=12, color="white", markeredgecolor="black",
                     linestyle="none")[0]]
    names = ["recommended ratio"]
    if result.tolerance is not None and top is not None:
        extra.append(ax.axhline(top - result.tolerance, color="gray", linestyle="--", linewidth=1))
        names.append(f"tolerance: {'baseline' if labelled else '1'} − {result.tolerance:g}")
    ax.legend(handles[:24] + extra, labels[:24] + names, fontsize="small", ncol=2)
    ax.set_xlabel("fraction of the group removed")
    ax.set_ylabel("accuracy" if labelled else "top-1 agreement with the original")
    ax.set_title("sensitivity per group" + (" (random inputs: see --data)" if result.data == "random" else ""))


def _plot_shares(result: Sensitivity, ax: Any) -> None:
    """Bars per group: the share of MACs it touches and, where timed, the latency saved at half width."""
    shown = [r for r in result.rows if "curve" in r]
    at = np.arange(len(shown))
    timed = result.latency is not None
    width = 0.4 if timed else 0.8
    ax.bar(at, [r["macs_share"] for r in shown], width, label="MACs touched")
    if timed:
        ax.bar(at + width, [r.get("latency_share") or 0.0 for r in shown], width,
               label="latency saved at half width")
    ax.legend(fontsize="small")
    ax.set_xticks(at + (width / 2 if timed else 0), [group_label(r) for r in shown], rotation=60, ha="right",
                  fontsize="small")
    ax.set_xlabel("group (first node)")
    ax.set_ylabel("share of the model")
    ax.set_title("where the MACs and the time are")
