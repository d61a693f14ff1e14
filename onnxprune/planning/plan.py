"""The plan: a public, versioned record of which channels were kept (format ``onnxprune.plan/1``).

It lists every node-output tensor of the original graph whose extent along ``axis`` shrank, with the sorted
indices kept. Contract (mask equivalence): without recovery, the pruned model computes exactly what the original
computes when every listed tensor is multiplied by its 0/1 keep-mask along ``axis`` right after it is produced.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.core.channels import Labeled
from onnxprune.errors import PlanError

__all__ = ["Plan", "PlanTensor", "PLAN_FORMAT"]

PLAN_FORMAT = "onnxprune.plan/1"


@dataclass(frozen=True)
class PlanTensor:
    name: str
    axis: int
    size: int
    keep: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    model_sha256: str | None
    tensors: tuple[PlanTensor, ...] = field(default_factory=tuple)

    @classmethod
    def from_keep(cls, keep: dict[str, np.ndarray], labels: dict[str, Labeled], sha: str | None,
                  order: list[str]) -> "Plan":
        """Build from kept positions; ``order`` gives the tensors' order (the graph's node order)."""
        rank = {name: k for k, name in enumerate(order)}
        names = sorted(keep, key=lambda n: (rank.get(n, len(rank)), n))
        return cls(sha, tuple(PlanTensor(n, labels[n].axis, labels[n].size, tuple(int(x) for x in keep[n]))
                              for n in names))

    def keep_map(self) -> dict[str, np.ndarray]:
        return {t.name: np.asarray(t.keep, dtype=np.int64) for t in self.tensors}

    def check(self, labels: Mapping[str, Labeled]) -> None:
        """Refuse an entry that names no channel tensor of the model (``labels``: the analysis's channel
        tensors) or gives another axis or size than the model's, in one line that says what the model has."""
        for t in self.tensors:
            lab = labels.get(t.name)
            if lab is None:
                known = list(labels)
                close = [n for n in known if t.name.strip("/") and t.name.strip("/") in n] or known
                example = f" (e.g. '{close[0]}')" if close else " (it has none)"
                raise PlanError(f"plan entry '{t.name}' names no channel tensor of the model{example}")
            if lab.axis != t.axis or lab.size != t.size:
                raise PlanError(f"plan entry '{t.name}' (axis {t.axis}, size {t.size}) does not match the model "
                                f"(axis {lab.axis}, size {lab.size})")

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "model_sha256": self.model_sha256,
            "tensors": [{"name": t.name, "axis": t.axis, "size": t.size, "keep": list(t.keep)}
                        for t in self.tensors],
        }

    def to_json(self) -> str:
        """JSON with one line per tensor (readable in a diff, compact for big models)."""
        d = self.to_dict()
        rows = ",\n  ".join(json.dumps(t) for t in d["tensors"])
        return (f'{{"format": {json.dumps(d["format"])},\n "model_sha256": {json.dumps(d["model_sha256"])},\n'
                f' "tensors": [\n  {rows}\n ]\n}}\n') if rows else json.dumps(d) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not an {PLAN_FORMAT} plan")
        try:
            tensors = tuple(PlanTensor(str(t["name"]), int(t["axis"]), int(t["size"]),
                                       tuple(int(k) for k in t["keep"])) for t in data["tensors"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan entry: {exc}") from exc
        for t in tensors:
            if list(t.keep) != sorted(set(t.keep)) or (t.keep and not 0 <= t.keep[0] <= t.keep[-1] < t.size):
                raise PlanError(f"plan entry '{t.name}': keep must be sorted unique indices below {t.size}")
        return cls(data.get("model_sha256"), tensors)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON ({exc})") from exc
