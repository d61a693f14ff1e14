"""``onnxprune analyze``: per-group sensitivity, MACs and latency shares, recommended per-group ratios."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from onnxprune.cli.format import format_sensitivity
from onnxprune.cli.options import data_options, load_command_data, parse_floats
from onnxprune.core.modelio import load_model, write_text_atomic
from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import CPU, check_provider, random_inputs
from onnxprune.pipeline.resources import check_fits
from onnxprune.planning.criteria import names as criterion_names

__all__ = ["analyze_cmd"]


@click.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="Samples to measure on [default: 64 seeded random inputs].")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for analysis.json and sensitivity.png.")
@click.option("--fractions", default="0.25,0.5,0.75", show_default=True, help="Fractions of each group to try.")
@click.option("--criterion", type=click.Choice(criterion_names("weights")), default="l2", show_default=True)
@click.option("--limit", type=int, default=256, show_default=True, help="Samples for the channel statistics.")
@click.option("--probe", type=int, default=32, show_default=True,
              help="Samples each candidate (one group cut) is measured on.")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="Largest accuracy drop (or disagreement) a recommended ratio may cost.")
@click.option("--no-latency", is_flag=True, help="Skip timing the groups (the latency share column).")
@click.option("--latency-groups", type=int, default=48, show_default=True,
              help="Time only the N groups touching the most MACs (0: like --no-latency).")
@click.option("--latency-rounds", type=int, default=5, show_default=True,
              help="Interleaved timing rounds per group at least (up to 4x as many until the share is stable).")
@click.option("--provider", default=CPU, show_default=True, metavar="NAME",
              help="onnxruntime execution provider the latency is measured on.")
@data_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success (no table, no warnings).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def analyze_cmd(model: Path, data_path: Path | None, out_dir: Path, fractions: str, criterion: str, limit: int,
                probe: int, tolerance: float, no_latency: bool, latency_groups: int, latency_rounds: int,
                provider: str, quiet: bool, debug: bool, **data_opts: Any) -> None:
    """Per-group sensitivity of MODEL, MACs share per group and recommended per-group ratios."""
    from onnxprune.tuning.sensitivity import plot, sensitivity

    steps = tuple(f for f in parse_floats(fractions) or ())
    if not steps or not all(0 < f < 1 for f in steps):
        raise UsageError(f"--fractions must be numbers in (0, 1), got '{fractions}'")
    if latency_groups < 0 or latency_rounds < 1:
        raise UsageError("--latency-groups must be >= 0 and --latency-rounds >= 1")
    check_provider(provider)
    original = load_model(model)
    check_fits(original, str(model), "analyze")
    data = load_command_data(data_path, model, original, data_opts)
    if data is None:
        data = _random_samples(original)
        _note("no --data: the scores and the estimated loss come from 64 seeded random inputs and say little "
              "about real data; run with --data SAMPLES", quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    if limit < 1 or probe < 1:
        raise UsageError("--limit and --probe must be >= 1")
    result = sensitivity(original, data, steps, criterion, data_opts["batch_size"], limit, tolerance, probe)
    result.data = str(data_path) if data_path is not None else "random"
    if not no_latency and latency_groups > 0:
        too_fast = result.add_latency(original, provider=provider, max_groups=latency_groups, rounds=latency_rounds)
        if too_fast:
            _note(f"no latency shares: the model {too_fast} on this machine", quiet)
        elif result.latency and result.latency["unstable"]:
            _note(f"latency share of {_count(len(result.latency['unstable']), 'group')} left out (-): still within "
                  f"the timing noise after {4 * latency_rounds} rounds", quiet)
    write_text_atomic(out_dir / "analysis.json", json.dumps(result.to_dict(), indent=1) + "\n")
    plotted = plot(result, out_dir / "sensitivity.png")
    if quiet:
        return
    click.echo(format_sensitivity(result))
    click.echo(f"wrote {out_dir / 'analysis.json'}" + (f" and {out_dir / 'sensitivity.png'}" if plotted else
                                                          " (no plot: pip install 'onnxprune[plot]')"))


def _random_samples(model: onnx.ModelProto) -> Dataset:
    """64 seeded random samples around the model's random input (what ``analyze`` measures on without data)."""
    feeds = random_inputs(model, 0)
    return Dataset({k: np.repeat(v, 64, axis=0) + np.random.default_rng(1).standard_normal(
        (64,) + v.shape[1:]).astype(v.dtype) for k, v in feeds.items()})


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"onnxprune: warning: {message}", err=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
