"""The op handlers, one module per op family (see :mod:`onnxprune.core.handlers` for what a handler owns).

Importing this package registers every built-in handler; :mod:`onnxprune` imports it first. Adding an op means
one handler module here (a :class:`~onnxprune.core.handlers.Handler` subclass decorated with ``@register``) and
its test in ``tests/ops/``.
"""
from __future__ import annotations

from onnxprune.ops import conv, elementwise, fused_conv, linear, norm, quantized, reshaping, slicing, spatial  # noqa: F401 - they register

__all__: list[str] = []
