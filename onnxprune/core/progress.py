"""Where long work is: a bar on a terminal, one plain line per step, candidate or epoch when stderr is piped.

Two pieces, used the same way by every long stage:

* :class:`Progress` draws a bar while a loop runs (only on a terminal);
* :func:`note` (or :meth:`Progress.note` inside a bar) prints one line saying where a long run is
  (``onnxprune: iterative step 2/4: ...``).

What shows depends on the mode the caller sets with :func:`progress_mode`: ``"tty"`` (the default, for library
use: bars and lines on a terminal only, silent in pipelines and tests), ``"lines"`` (the command line: bars on a
terminal, and the plain lines also when stderr is not one; never bars or carriage returns there) and ``"off"``
(``--quiet``: nothing).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

__all__ = ["Progress", "note", "progress_mode", "MODES"]

MODES = ("tty", "lines", "off")
_MODE: ContextVar[str] = ContextVar("onnxprune_progress_mode", default="tty")


@contextmanager
def progress_mode(mode: str) -> Iterator[None]:
    """Within the ``with`` block, progress shows as ``mode`` says (one of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def note(text: str, stream: TextIO | None = None) -> None:
    """One line saying where a long run is, as ``onnxprune: <text>``: on a terminal, and also on a pipe when
    the command line asked for plain lines; never when quiet."""
    out = stream or sys.stderr
    mode = _MODE.get()
    if mode == "off" or (mode == "tty" and not _is_tty(out)):
        return
    out.write(f"onnxprune: {text}\n")
    out.flush()


class Progress:
    """``with Progress("calibrating", total) as p: p.advance(n)``; draws only when ``stream`` is a TTY (and the
    mode is not ``"off"``). ``enabled=False`` silences the bar and its notes (e.g. every process but the first
    under ``torchrun``)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.silent = enabled is False or _MODE.get() == "off"
        self.enabled = not self.silent and (_is_tty(self.stream) if enabled is None else enabled)
        self._last = 0.0
        self._drawn = 0

    def __enter__(self) -> "Progress":
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        text = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        self.stream.write("\r" + text)
        self.stream.flush()
        self._drawn = len(text)

    def note(self, text: str) -> None:
        """A line (see :func:`note`) printed above the bar, which is drawn again below it."""
        if self.silent:
            return
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
            note(text, self.stream)
            self._draw()
        else:
            note(text, self.stream)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
