"""The command line: the only place that prints or exits (``onnxprune``, ``python -m onnxprune``)."""
from __future__ import annotations

from onnxprune.cli.app import main

__all__ = ["main"]
