"""The one error hierarchy of onnxprune; ``onnxprune.cli.app`` maps it to exit codes.

Exit codes of the command line: 0 ok, 1 error (any :class:`OnnxPruneError` not listed here, or an unreadable
file), 2 usage (:class:`UsageError`), 3 verification failed (:class:`VerificationError`), 130 interrupted.
"""
from __future__ import annotations

__all__ = [
    "OnnxPruneError",
    "ModelError",
    "OutputError",
    "UnsupportedError",
    "PlanError",
    "UsageError",
    "VerificationError",
]


class OnnxPruneError(Exception):
    """Base of every error onnxprune raises on purpose (exit code 1)."""

    exit_code = 1


class ModelError(OnnxPruneError):
    """The input model cannot be read or is not a valid ONNX graph."""


class OutputError(OnnxPruneError):
    """An output cannot be written: a missing or read-only directory, a full disk, a path that is a folder."""


class UnsupportedError(OnnxPruneError):
    """The model uses something onnxprune cannot handle at all."""


class PlanError(OnnxPruneError):
    """A plan does not fit the model or is malformed."""


class UsageError(OnnxPruneError):
    """An option value is out of range or options contradict each other (exit code 2)."""

    exit_code = 2


class VerificationError(OnnxPruneError):
    """The pruned model failed verification (exit code 3); nothing is written."""

    exit_code = 3
