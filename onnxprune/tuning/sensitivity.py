"""Sensitivity analysis: how much each channel group matters. For every prunable group and fraction, remove
that fraction of the group alone (lowest scores first) and (1) estimate the loss from channel statistics over
the calibration samples: the share of the consumers' input energy the removed channels carry; (2) measure it
on a probe subset: the model with that group cut against the original (accuracy where there are labels, top-1
agreement and relative error always). Also the share of MACs each group touches, and a recommended per-group
ratio: the deepest tried fraction whose measured loss stays within the tolerance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
from onnxprune.tuning.latency import latency_table

__all__ = ["Sensitivity", "sensitivity", "plot"]


@dataclass
class Sensitivity:
    fractions: list[float]
    rows: list[dict]  # per group: id, size, macs share, blocked, and per fraction: agreement, rel_error, accuracy
    baseline_accuracy: float | None
    latency: dict | None = None  # how the latency columns were measured (see add_latency)

    def to_dict(self) -> dict:
        return {"fractions": self.fractions, "baseline_accuracy": self.baseline_accuracy, "latency": self.latency,
                "groups": self.rows}

    def add_latency(self, model: onnx.ModelProto, *, provider: str = CPU, max_groups: int | None = 48,
                    rounds: int = 5) -> None:
        """Add each prunable group's latency share (the latency saved when it alone keeps half its channels,
        as a fraction of the model's) and its latency at every kept fraction (``1 - fractions``).

        Only the ``max_groups`` groups touching the most MACs are timed (``None``: all); the others get
        ``latency_share: null``. Each group costs one rewrite and one session per fraction, timed with the
        original over ``rounds`` interleaved rounds on one thread."""
        curves = sorted((r for r in self.rows if "curve" in r), key=lambda r: (-r["macs"], r["id"]))
        chosen = [r["id"] for r in curves[:max_groups]]
        table = latency_table(model, [1.0 - f for f in self.fractions], groups=chosen, provider=provider,
                              rounds=rounds)
        for r in curves:
            row = table.groups.get(r["id"])
            r["latency_share"] = row["share"] if row else None
            if row:
                r["latency"] = {"kept": table.kept, "widths": row["widths"], "ms": row["ms"]}
        self.latency = {"provider": provider, "threads": table.threads, "rounds": rounds,
                        "ms_original": table.ms_original, "groups_timed": len(table.groups),
                        "groups_not_timed": table.skipped}


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
    return Sensitivity(list(fractions), rows, base_acc)


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


def plot(result: Sensitivity, path: Path) -> bool:
    """Write a PNG of the sensitivity curves (needs matplotlib: ``pip install 'onnxprune[plot]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in result.rows:
        if "curve" in row:
            xs = [0.0] + [p["fraction"] for p in row["curve"]]
            ys = [1.0] + [p["agreement"] for p in row["curve"]]
            left.plot(xs, ys, marker="o", linewidth=1, label=f"group {row['id']}")
    left.set_xlabel("fraction of the group removed")
    left.set_ylabel("top-1 agreement with the original")
    left.set_title("sensitivity per group")
    left.legend(fontsize="small", ncol=2)
    shown = [r for r in result.rows if "curve" in r]
    at = np.arange(len(shown))
    width = 0.4 if result.latency else 0.8
    right.bar(at, [r["macs_share"] for r in shown], width, label="MACs touched")
    if result.latency:
        right.bar(at + width, [r.get("latency_share") or 0.0 for r in shown], width,
                  label="latency saved at half width")
        right.legend(fontsize="small")
    right.set_xticks(at + (width / 2 if result.latency else 0), [str(r["id"]) for r in shown])
    right.set_xlabel("group")
    right.set_ylabel("share of the model")
    right.set_title("where the MACs and the time are")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
