"""onnxprune: structured channel pruning of ONNX models.

>>> import onnxprune
>>> model = onnxprune.load("models/mnist_resnet.onnx")
>>> result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
>>> onnxprune.save(result.model, "mnist_resnet.pruned.onnx")
"""
from __future__ import annotations

__version__ = "0.1.0"

from onnxprune import ops  # noqa: E402,F401 - registers the built-in op handlers first
from onnxprune.analysis.dependency import Analysis, PruneGroup, analyze  # noqa: E402
from onnxprune.core.modelio import load_model as load  # noqa: E402
from onnxprune.core.modelio import save_model as save  # noqa: E402
from onnxprune.errors import (  # noqa: E402
    ModelError,
    OnnxPruneError,
    OutputError,
    PlanError,
    UnsupportedError,
    UsageError,
    VerificationError,
)
from onnxprune.pipeline.pruning import PruneConfig, PruneResult, apply_plan, prune  # noqa: E402
from onnxprune.pipeline.search import prune_to_latency, prune_within  # noqa: E402
from onnxprune.planning.plan import Plan  # noqa: E402
from onnxprune.rewriting.verify import Verification, verify  # noqa: E402
from onnxprune.training.finetune import FinetuneConfig, FinetuneResult, finetune  # noqa: E402 - imports torch only when called

__all__ = [
    "__version__",
    "Analysis",
    "FinetuneConfig",
    "FinetuneResult",
    "ModelError",
    "OnnxPruneError",
    "OutputError",
    "Plan",
    "PlanError",
    "PruneConfig",
    "PruneGroup",
    "PruneResult",
    "UnsupportedError",
    "UsageError",
    "Verification",
    "VerificationError",
    "analyze",
    "apply_plan",
    "finetune",
    "load",
    "prune",
    "prune_to_latency",
    "prune_within",
    "save",
    "verify",
]
