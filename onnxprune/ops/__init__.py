"""The op handlers, one module per op family (see :mod:`onnxprune.core.handlers` for what a handler owns).

Importing this package imports every module in it, which registers the built-in handlers; :mod:`onnxprune`
imports it first. Adding an op means one handler module here (a :class:`~onnxprune.core.handlers.Handler`
subclass decorated with ``@register``) and its test in ``tests/ops/`` -- nothing else changes.
"""
from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__: list[str] = []
