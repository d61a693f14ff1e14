"""Importance criteria: a score per channel (unit) of every group; low scores are removed first.

Each criterion is one registered :class:`Criterion`, found by name. Magnitude criteria read the weight slices
the op handlers declared (filters, consumer columns, norm scales), normalise each slice set by its mean so wide
and narrow layers weigh alike, and average them over the group. Data-driven criteria read channel statistics
measured on calibration data (or, for ``taylor``, gradients through the torch bridge, registered by
:mod:`onnxprune.training.taylor`).
"""
from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxprune.analysis.dependency import Analysis, WeightRef
from onnxprune.core.registry import Registry
from onnxprune.errors import UsageError
from onnxprune.measure.calibrate import ChannelStats, collect
from onnxprune.measure.data import Dataset

# CRITERIA, DATA_CRITERIA and GRADIENT_CRITERIA are read from the registry on access (see __getattr__).
__all__ = ["Criterion", "get_criterion", "names", "register", "score", "channel_criterion", "consumer_columns",
           "group_sums", "normalised", "row_measure"]

Needs = Literal["weights", "calibration", "gradients"]
Scores = dict[int, np.ndarray]
#: ``(model, tensors, channel axis per tensor, data, batch size, sample limit) -> per-tensor statistics``.
Statistics = Callable[[onnx.ModelProto, list[str], dict[str, int], Dataset, int, int | None], Mapping[str, Any]]
_MAGNITUDE_ROLES = ("out", "in", "norm")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Criterion:
    """One importance criterion.

    ``needs`` says what it reads: ``"weights"`` only, ``"calibration"`` data (channel statistics measured in
    onnxruntime by ``statistics``) or ``"gradients"`` (through the torch bridge). ``high_prunes`` marks a
    criterion whose raw measure is *higher* for the channels to remove (APoZ); its ``score`` already turns it
    around, so every score ranks low-first. ``score(analysis, seed, stats)`` returns the scores per group id.
    """

    name: str
    needs: Needs
    score: Callable[[Analysis, int, Mapping[str, Any] | None], Scores]
    high_prunes: bool = False
    statistics: Statistics | None = None

    @property
    def data_driven(self) -> bool:
        return self.needs != "weights"


_REGISTRY: Registry[str, Criterion] = Registry("criteria")


def register(entry: Criterion) -> Criterion:
    """Add ``entry`` to the registry; a second criterion of the same name is refused (``ValueError``)."""
    return _REGISTRY.add(entry.name, entry)


def names(needs: Needs | None = None) -> tuple[str, ...]:
    """Registered criterion names in registration order (only those that need ``needs``, when given)."""
    return tuple(n for n, c in _REGISTRY.items() if needs is None or c.needs == needs)


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``; :class:`UsageError` naming the choices when there is none."""
    found = _REGISTRY.get(name)
    if found is None:
        raise UsageError(f"unknown criterion '{name}' (choose from {', '.join(names())})")
    return found


def __getattr__(name: str) -> tuple[str, ...]:
    """``CRITERIA``, ``DATA_CRITERIA`` and ``GRADIENT_CRITERIA``: read from the registry when asked for."""
    derived: dict[str, Needs | None] = {"CRITERIA": None, "DATA_CRITERIA": "calibration",
                                        "GRADIENT_CRITERIA": "gradients"}
    if name in derived:
        return names(derived[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def score(analysis: Analysis, criterion: str = "l2", seed: int = 0,
          stats: Mapping[str, Any] | None = None) -> Scores:
    """Scores per group id, one per unit of the group (blocked groups are scored too, for reports).

    Data-driven criteria need ``stats`` (their :attr:`Criterion.statistics` over the consumer inputs, by
    default :func:`onnxprune.measure.calibrate.collect`); groups no consumer reads fall back to ``l2``.
    """
    entry = get_criterion(criterion)
    if not entry.data_driven:
        return entry.score(analysis, seed, stats)
    if stats is None:
        raise UsageError(f"criterion '{entry.name}' needs calibration data (--calib)")
    return _or_l2(analysis, entry.score(analysis, seed, stats))


def normalised(values: np.ndarray) -> np.ndarray:
    """``values`` divided by their mean (unchanged where the mean is not positive)."""
    mean = values.mean()
    return values / mean if mean > 0 else values


def group_sums(analysis: Analysis, atoms: np.ndarray, values: np.ndarray, sums: Scores,
               counts: Scores | None = None) -> None:
    """Add ``values`` (one per atom) into ``sums[group id][unit]`` and, when given, 1 into ``counts`` likewise
    (a tensor read after a Concat spans several groups)."""
    gids, local = analysis.unit_index(atoms)
    for gid in np.unique(gids):
        mine = gids == gid
        np.add.at(sums[int(gid)], local[mine], values[mine])
        if counts is not None:
            np.add.at(counts[int(gid)], local[mine], 1.0)


def consumer_columns(analysis: Analysis, measured: Container[str]
                     ) -> Iterator[tuple[np.ndarray, str, np.ndarray]]:
    """(atoms, input tensor, squared norm of each weight column) of every consumer whose input tensor is in
    ``measured``: how strongly each consumer reads each channel."""
    for ref in analysis.weights:
        tensor = analysis.graph.nodes[ref.node].input[0]
        if ref.role != "in" or tensor not in measured:
            continue
        value = analysis.graph.const(ref.name)
        if value is None:
            raise ValueError(f"consumer weight '{ref.name}' is not a constant")
        yield ref.atoms, tensor, row_measure(ref, value, _l2)


def row_measure(ref: WeightRef, value: np.ndarray, per_row: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``per_row`` (a function of each row alone) of the float64 rows of ``ref``'s view of ``value``.

    For a plain view (one axis first, the rest flattened) no float64 copy of the weight is made: the squared
    norm (``l2``) is one ``einsum`` accumulating in float64 straight from the stored values (the sums of
    converting the rows whole, in another order: equal to ~1e-16 relative; rows holding the same values in the
    same order still tie exactly), and other measures convert a slice of rows (about 1 MiB of float64) at a
    time -- the same numbers bit for bit, as each slice keeps the whole view's layout, so numpy sums each row
    in the same order (no slice has a single row, whose layout numpy may treat differently)."""
    if ref.axis is None or value.ndim == 0:
        return per_row(ref.view(value).astype(np.float64, copy=False))
    axis = ref.axis % value.ndim
    if per_row is _l2 and value.ndim <= 26:
        letters = "".join(chr(ord("a") + k) for k in range(value.ndim))
        return np.einsum(f"{letters},{letters}->{letters[axis]}", value, value, dtype=np.float64)
    n = value.shape[axis]
    step = max(2, _CHUNK_BYTES // max(8 * (value.size // max(n, 1)), 1))
    if step >= n:
        return per_row(ref.view(value).astype(np.float64, copy=False))
    starts = list(range(0, n, step))
    if n - starts[-1] == 1:
        starts.pop()  # the last row joins the slice before it
    out = np.empty(n)
    index: list[slice] = [slice(None)] * value.ndim
    for start, stop in zip(starts, [*starts[1:], n]):
        index[axis] = slice(start, stop)
        out[start:stop] = per_row(ref.view(value[tuple(index)]).astype(np.float64, copy=False))
    return out


def _zeros(analysis: Analysis) -> Scores:
    return {g.id: np.zeros(g.size) for g in analysis.groups}


def _or_l2(analysis: Analysis, scores: Scores) -> Scores:
    """``scores``, with ``l2`` for the groups they leave all zero."""
    fallback = _magnitude(analysis, _l2, _MAGNITUDE_ROLES)
    return {gid: s if np.any(s) else fallback[gid] for gid, s in scores.items()}


def _magnitude(analysis: Analysis, per_row: Callable[[np.ndarray], np.ndarray], roles: tuple[str, ...]) -> Scores:
    sums, counts = _zeros(analysis), _zeros(analysis)
    for ref in analysis.weights:
        if ref.role not in roles or not len(ref.atoms):
            continue
        value = analysis.graph.const(ref.name)
        if value is None:
            continue
        if ref.axis is None:  # quantized codes: the view dequantizes them
            rows = ref.view(value)
            if not np.issubdtype(rows.dtype, np.floating):
                continue
            measure = per_row(rows.astype(np.float64, copy=False))
        elif np.issubdtype(value.dtype, np.floating):
            measure = row_measure(ref, value, per_row)
        else:
            continue
        group_sums(analysis, ref.atoms, normalised(measure), sums, counts)
    return {gid: sums[gid] / np.maximum(counts[gid], 1.0) for gid in sums}


def _l1(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows).sum(axis=1)


def _l2(rows: np.ndarray) -> np.ndarray:
    return np.square(rows).sum(axis=1)


def _gamma(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows[:, 0])


def _mean(sums: Scores, counts: Scores) -> Scores:
    return {gid: np.where(counts[gid] > 0, sums[gid] / np.maximum(counts[gid], 1.0), 0.0) for gid in sums}


def channel_criterion(name: str, measure: Callable[[Any], np.ndarray], *, needs: Needs = "calibration",
                      high_prunes: bool = False, statistics: Statistics | None = None) -> Criterion:
    """A criterion that scores each channel by ``measure`` of the statistics of the tensors consumers read
    (``1 - measure`` with ``high_prunes``)."""
    def scorer(analysis: Analysis, seed: int, stats: Mapping[str, Any] | None) -> Scores:
        sums, counts = _zeros(analysis), _zeros(analysis)
        for tensor, st in (stats or {}).items():
            lab = analysis.labels.get(tensor)
            if lab is not None:
                value = 1.0 - measure(st) if high_prunes else measure(st)
                group_sums(analysis, lab.atoms, normalised(np.asarray(value)), sums, counts)
        return _mean(sums, counts)
    return Criterion(name, needs, scorer, high_prunes, statistics or collect)


def _consumer_criterion(name: str, combine: Callable[[ChannelStats, np.ndarray], np.ndarray]) -> Criterion:
    """A criterion that scores each channel by ``combine(statistics of its consumer's input, squared norm of
    the consumer weight column reading it)``, summed over consumers."""
    def scorer(analysis: Analysis, seed: int, stats: Mapping[str, Any] | None) -> Scores:
        sums, counts = _zeros(analysis), _zeros(analysis)
        measured = stats or {}
        for atoms, tensor, column in consumer_columns(analysis, measured):
            group_sums(analysis, atoms, normalised(combine(measured[tensor], column)), sums, counts)
        return _mean(sums, counts)
    return Criterion(name, "calibration", scorer, statistics=collect)


def _random(analysis: Analysis, seed: int, stats: Mapping[str, Any] | None) -> Scores:
    return {g.id: np.random.default_rng([seed, g.id]).random(g.size) for g in analysis.groups}


def _bn_scale(analysis: Analysis, seed: int, stats: Mapping[str, Any] | None) -> Scores:
    return _or_l2(analysis, _magnitude(analysis, _gamma, ("norm",)))


register(Criterion("l1", "weights", lambda a, seed, stats: _magnitude(a, _l1, _MAGNITUDE_ROLES)))
register(Criterion("l2", "weights", lambda a, seed, stats: _magnitude(a, _l2, _MAGNITUDE_ROLES)))
register(Criterion("bn-scale", "weights", _bn_scale))
register(Criterion("random", "weights", _random))
register(channel_criterion("mean-act", lambda st: st.mean_activation))
register(channel_criterion("apoz", lambda st: st.apoz, high_prunes=True))
register(_consumer_criterion("act-var", lambda st, column: st.variance * column))
register(_consumer_criterion("wanda", lambda st, column: np.sqrt(column) * st.rms))
