"""The ``onnxprune`` command: parses options, calls the library, prints, and maps errors to exit codes.

Exit codes: 0 ok, 1 error (bad input, unwritable output), 2 usage, 3 verification failed. Errors are one line,
``onnxprune: error: ...``; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import click
import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from onnxprune import __version__
from onnxprune.analysis.dependency import analyze
from onnxprune.cli.finetune import register as register_finetune
from onnxprune.cli.options import finetune_config, training_options
from onnxprune.core.graph import Graph, static_input_shapes
from onnxprune.core.modelio import file_sha256, load_model, save_model, write_text_atomic
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.measure.data import ImageSpec, load_data
from onnxprune.measure.evaluate import evaluate
from onnxprune.measure.runtime import CPU, check_provider
from onnxprune.measure.stats import (
    format_evaluation,
    format_groups,
    format_sensitivity,
    format_summary,
    group_rows,
    model_stats,
    summary_document,
)
from onnxprune.pipeline.pruning import (
    DEFAULT_DATA_CRITERION,
    SCHEDULES,
    TRAINING_SCHEDULES,
    PruneConfig,
    apply_plan,
    prune,
    prune_to_latency,
    prune_within,
)
from onnxprune.planning.criteria import CRITERIA
from onnxprune.planning.plan import Plan
from onnxprune.rewriting.recover import RECOVERY_MODES
from onnxprune.training.schedules import training_hooks

__all__ = ["main"]


class _DefaultToPrune(click.Group):
    """``onnxprune MODEL ...`` means ``onnxprune prune MODEL ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def _parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise UsageError(f"--input-shape expects NAME:D1xD2x..., got '{value}'") from None
    return shapes or None


def _round_to(value: str | int) -> int | str:
    """``--round-to``: a positive integer or ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--round-to expects a positive integer or 'auto', got '{value}'")
    return n


def _floats(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got '{value}'") from None


def _image_spec(model: Path, preprocess: Path | None, size: str | None, mean: str | None, std: str | None,
                scale: float | None, layout: str | None, color: str | None) -> ImageSpec:
    """Preprocessing for image folders: a spec file (--preprocess, or <model>.preprocess.json beside the model)
    overridden by flags."""
    beside = model.with_name(model.stem + ".preprocess.json")
    source = preprocess or (beside if beside.exists() else None)
    spec = ImageSpec.from_file(source) if source is not None else ImageSpec()
    changes: dict = {}
    if size is not None:
        try:
            h, _, w = size.lower().partition("x")
            changes["size"] = (int(h), int(w or h))
        except ValueError:
            raise UsageError(f"--size expects HxW, got '{size}'") from None
    for key, value in (("mean", _floats(mean)), ("std", _floats(std)), ("scale", scale), ("layout", layout),
                       ("color", color)):
        if value is not None:
            changes[key] = value
    return dataclasses.replace(spec, **changes)


def data_options(fn):
    """Options describing how image folders become model input (shared by prune and eval)."""
    for option in reversed([
        click.option("--preprocess", type=click.Path(path_type=Path),
                     help="JSON preprocessing spec for image folders [default: <model>.preprocess.json]."),
        click.option("--size", metavar="HxW", help="Resize images to HxW."),
        click.option("--mean", metavar="M[,M,M]", help="Subtract per channel (after --scale)."),
        click.option("--std", metavar="S[,S,S]", help="Divide per channel (after --mean)."),
        click.option("--scale", type=float, help="Multiply pixels by this first [default: 1/255]."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Input layout [default: NCHW]."),
        click.option("--color", type=click.Choice(["RGB", "BGR", "L"]), help="Channel order [default: RGB]."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per onnxruntime run."),
    ]):
        fn = option(fn)
    return fn


def _load_data(path: Path | None, model_path: Path, model, opts: dict):
    if path is None:
        return None
    spec = _image_spec(model_path, opts["preprocess"], opts["size"], opts["mean"], opts["std"], opts["scale"],
                       opts["layout"], opts["color"])
    return load_data(path, model, spec)


@click.group(cls=_DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune", message="%(prog)s %(version)s")
def cli() -> None:
    """Structured channel pruning for ONNX models.

    \b
    onnxprune model.onnx --ratio 0.5       prune, verify, write model.pruned.onnx
    onnxprune inspect model.onnx           show the channel groups and what blocks them
    onnxprune model.onnx --calib data.npz  data-driven scores and training-free recovery
    onnxprune eval small.onnx --data val.npz --reference model.onnx
    onnxprune apply model.onnx --plan plan.json   re-apply a saved plan
    onnxprune finetune small.onnx --data train.npz --teacher model.onnx   train through torch
    """


def _read_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``--config FILE``: TOML whose keys are the long option names; flags on the command line win."""
    if value is None:
        return None
    try:
        with open(value, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config '{value}': {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config '{value}' is not valid TOML: {exc}") from exc
    names: dict[str, str] = {}
    for p in ctx.command.params:
        if p.name in ("config_path", "debug"):
            continue
        for opt in list(p.opts) + [p.name]:
            names[opt.lstrip("-").replace("-", "_")] = p.name
    defaults = {}
    for key, item in data.items():
        target = names.get(key.replace("-", "_"))
        if target is None:
            raise UsageError(f"config '{value}': unknown key '{key}'")
        defaults[target] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@cli.command("prune")
@click.option("--config", "config_path", type=click.Path(path_type=Path), is_eager=True,
              callback=_read_config, help="TOML file pinning options (keys = long option names); flags override.")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: <stem>.pruned.onnx].")
@click.option("--ratio", type=float, default=0.5, show_default=True,
              help="Fraction of the channels removed from every prunable group, in [0, 1).")
@click.option("--criterion", type=click.Choice(CRITERIA),
              help=f"Channel importance criterion [default: l2; {DEFAULT_DATA_CRITERION} with --calib].")
@click.option("--target-macs", type=float, metavar="F",
              help="Keep this fraction of the MACs (global ranking and a cost-model search; overrides --ratio).")
@click.option("--target-params", type=float, metavar="F",
              help="Keep this fraction of the parameters (overrides --ratio).")
@click.option("--target-latency", type=float, metavar="F",
              help="Keep this fraction of the onnxruntime latency (1 thread, --provider, measured side by side).")
@click.option("--provider", default=CPU, show_default=True, metavar="NAME",
              help="onnxruntime execution provider that --target-latency and --round-to auto measure on.")
@click.option("--max-drop", type=float, metavar="D",
              help="Prune as deep as keeps the --eval accuracy drop (or top-1 disagreement) within D, e.g. 0.01.")
@click.option("--global", "global_ranking", is_flag=True,
              help="Rank all groups together (normalised scores) instead of cutting each group by --ratio.")
@click.option("--round-to", default="1", show_default=True, metavar="N|auto",
              help="Kept channel counts are multiples of N; auto: per group, the multiple onnxruntime runs "
                   "fastest (measured on --provider).")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Fewest channels a group keeps.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave groups touching a node or tensor matching this glob intact (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random scores and test inputs.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), help="Write the plan (JSON) here.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the report (JSON) here.")
@click.option("--no-verify", is_flag=True, help="Skip verification (checker, onnxruntime, mask equivalence).")
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224",
              help="Concrete shape for a dynamic input, for verification and MAC counts (repeatable).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration samples (.npz, .npy or image folder): data-driven scores and recovery.")
@click.option("--calib-samples", type=int, default=512, show_default=True, help="Use at most N calibration samples.")
@click.option("--recover", type=click.Choice(RECOVERY_MODES),
              help="Training-free recovery [default: lstsq with --calib, none without].")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="oneshot", show_default=True,
              help="iterative: remove --step of the remaining channels, re-measure and recover, repeat.")
@click.option("--step", type=float, default=0.2, show_default=True,
              help="Fraction of the remaining channels removed per iterative/dropnet step.")
@click.option("--data", "train_path", type=click.Path(path_type=Path),
              help="Training samples for the dropnet/auto-balanced schedules (labels optional: without them the "
                   "original model's outputs are the targets).")
@click.option("--kappa", type=float, default=0.99, show_default=True,
              help="dropnet: stop before the --eval metric falls below kappa x the original's.")
@click.option("--alpha", type=float, default=5e-3, show_default=True,
              help="auto-balanced: strength of the regulariser.")
@training_options
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Evaluation samples: accuracy (labels) and fidelity before and after, in the report.")
@data_options
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest relative error the mask-equivalence check accepts.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune_cmd(model: Path, output: Path | None, ratio: float, criterion: str | None, target_macs: float | None,
              target_params: float | None, target_latency: float | None, max_drop: float | None,
              provider: str, global_ranking: bool,
              round_to: str, min_channels: int, exclude: tuple[str, ...], seed: int, plan_path: Path | None,
              report_path: Path | None, no_verify: bool, input_shape: tuple[str, ...], calib: Path | None,
              calib_samples: int, recover: str | None, schedule: str, step: float, eval_path: Path | None,
              tolerance: float, as_json: bool, quiet: bool, debug: bool, config_path: Path | None,
              train_path: Path | None, kappa: float, alpha: float, **data_opts) -> None:
    """Prune MODEL and write a smaller, verified model."""
    training = finetune_config(data_opts, data_opts["batch_size"], seed)
    output = output or model.with_name(model.stem + ".pruned.onnx")
    check_provider(provider)
    config = PruneConfig(ratio=ratio, criterion=criterion, global_ranking=global_ranking,
                         round_to=_round_to(round_to),
                         min_channels=min_channels, exclude=tuple(exclude), seed=seed, verify=not no_verify,
                         input_shapes=_parse_shapes(input_shape), recover=recover, calib_samples=calib_samples,
                         batch_size=data_opts["batch_size"], schedule=schedule, step=step, tolerance=tolerance,
                         target_macs=target_macs, target_params=target_params)
    config.resolved(calib is not None or (schedule in TRAINING_SCHEDULES and train_path is not None))
    if schedule in TRAINING_SCHEDULES and (target_latency is not None or max_drop is not None):
        raise UsageError(f"--schedule {schedule} works with --ratio; not with --target-latency or --max-drop")
    _check_outputs(model, [p for p in (output, plan_path, report_path) if p is not None])
    original = load_model(model)
    calib_data = _load_data(calib, model, original, data_opts)
    eval_data = _load_data(eval_path, model, original, data_opts)
    train_data = _load_data(train_path, model, original, data_opts)
    hooks = None
    if schedule in TRAINING_SCHEDULES:
        hooks = training_hooks(schedule, original, train_data, eval_data, training, kappa, alpha)
        calib_data = calib_data or train_data
    elif train_data is not None:
        raise UsageError("--data (training samples) needs --schedule dropnet or auto-balanced; "
                         "use --calib for calibration")
    config = config.measure_round_to(original, provider=provider)
    if target_latency is not None:
        if max_drop is not None or target_macs is not None or target_params is not None:
            raise UsageError("give one budget: --target-latency, --target-macs, --target-params or --max-drop")
        result = prune_to_latency(original, config, target_latency, calib=calib_data, eval_data=eval_data,
                                  source_sha256=file_sha256(model), provider=provider)
    elif max_drop is not None:
        if eval_data is None:
            raise UsageError("--max-drop needs evaluation data (--eval)")
        result = prune_within(original, config, max_drop, eval_data, calib=calib_data,
                              source_sha256=file_sha256(model))
    else:
        result = prune(original, config, calib=calib_data, eval_data=eval_data, source_sha256=file_sha256(model),
                       hooks=hooks)
    written = save_model(result.model, output)
    try:
        result.report["input"] = {"path": str(model), "bytes": model.stat().st_size}
        result.report["output"] = {"path": str(output), "bytes": sum(p.stat().st_size for p in written)}
        if config_path is not None:
            result.report["config_file"] = {"path": str(config_path), "sha256": file_sha256(config_path)}
        if plan_path is not None:
            write_text_atomic(plan_path, result.plan.to_json())
        if report_path is not None:
            write_text_atomic(report_path, json.dumps(result.report, indent=1) + "\n")
    except Exception:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    if as_json:
        click.echo(json.dumps(summary_document(result.report, plan_path, report_path)))
    elif not quiet:
        click.echo(f"onnxprune: {model} -> {output}", err=True)
        click.echo(format_summary(result.report), err=True)


def _check_outputs(model: Path, outputs: list[Path]) -> None:
    """Refuse to overwrite the input, and fail before any work when an output cannot be written."""
    resolved = [out.resolve() for out in outputs]
    if len(set(resolved)) != len(resolved):
        raise UsageError("the model, --plan and --report outputs must be different files")
    for out in outputs:
        if out.exists() and model.exists() and os.path.samefile(out, model):
            raise UsageError(f"refusing to overwrite the input model '{model}'; choose another --output")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise OnnxPruneError(f"cannot write '{out}': directory '{parent}' does not exist")
        if not os.access(parent, os.W_OK):
            raise OnnxPruneError(f"cannot write '{out}': directory '{parent}' is not writable")
        if out.is_dir():
            raise OnnxPruneError(f"cannot write '{out}': it is a directory")


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224", help="Concrete shape for MAC counts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect_cmd(model: Path, as_json: bool, input_shape: tuple[str, ...], debug: bool) -> None:
    """Show MODEL's channel groups: sizes, MACs, and what blocks each group and why."""
    original = load_model(model)
    graph = Graph.build(original)
    analysis = analyze(graph)
    stats = model_stats(original, static_input_shapes(original, _parse_shapes(input_shape)))
    rows = group_rows(analysis, {}, stats.macs_per_node)
    if as_json:
        click.echo(json.dumps({"model": str(model), "params": stats.params, "macs": stats.macs, "groups": rows},
                              indent=1))
    else:
        click.echo(format_groups(rows, stats.macs))


@cli.command("apply")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), required=True,
              help="A plan written by --plan (onnxprune.plan/1), possibly edited.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: <stem>.pruned.onnx].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the report (JSON) here.")
@click.option("--no-verify", is_flag=True, help="Skip verification.")
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224", help="Concrete shape for checks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for verification inputs.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def apply_cmd(model: Path, plan_path: Path, output: Path | None, report_path: Path | None, no_verify: bool,
              input_shape: tuple[str, ...], seed: int, quiet: bool, debug: bool) -> None:
    """Re-apply a saved plan to MODEL (same architecture, e.g. another checkpoint)."""
    output = output or model.with_name(model.stem + ".pruned.onnx")
    _check_outputs(model, [p for p in (output, report_path) if p is not None])
    try:
        text = plan_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read plan '{plan_path}': {exc.strerror or exc}") from exc
    plan = Plan.from_json(text)
    original = load_model(model)
    result = apply_plan(original, plan, verify_result=not no_verify, seed=seed,
                        input_shapes=_parse_shapes(input_shape))
    written = save_model(result.model, output)
    if report_path is not None:
        try:
            write_text_atomic(report_path, json.dumps(result.report, indent=1) + "\n")
        except Exception:
            for p in written:
                p.unlink(missing_ok=True)
            raise
    if not quiet:
        click.echo(f"onnxprune: {model} -> {output} (plan {plan_path})", err=True)
        click.echo(format_summary(result.report), err=True)


@cli.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="Samples to measure on [default: 64 seeded random inputs].")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for analysis.json and sensitivity.png.")
@click.option("--fractions", default="0.25,0.5,0.75", show_default=True, help="Fractions of each group to try.")
@click.option("--criterion", type=click.Choice(["l1", "l2", "bn-scale", "random"]), default="l2", show_default=True)
@click.option("--limit", type=int, default=256, show_default=True, help="Samples for the channel statistics.")
@click.option("--probe", type=int, default=32, show_default=True,
              help="Samples each candidate (one group cut) is measured on.")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="Largest accuracy drop (or disagreement) a recommended ratio may cost.")
@click.option("--no-latency", is_flag=True, help="Skip timing the groups (the latency share column).")
@click.option("--latency-groups", type=int, default=48, show_default=True,
              help="Time only the N groups touching the most MACs (0: like --no-latency).")
@click.option("--latency-rounds", type=int, default=5, show_default=True,
              help="Interleaved timing rounds per group.")
@click.option("--provider", default=CPU, show_default=True, metavar="NAME",
              help="onnxruntime execution provider the latency is measured on.")
@data_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def analyze_cmd(model: Path, data_path: Path | None, out_dir: Path, fractions: str, criterion: str, limit: int,
                probe: int, tolerance: float, no_latency: bool, latency_groups: int, latency_rounds: int,
                provider: str, debug: bool, **data_opts) -> None:
    """Per-group sensitivity of MODEL, MACs share per group and recommended per-group ratios."""
    from onnxprune.measure.data import Dataset
    from onnxprune.measure.runtime import random_inputs
    from onnxprune.tuning.sensitivity import plot, sensitivity

    steps = tuple(f for f in _floats(fractions) or ())
    if not steps or not all(0 < f < 1 for f in steps):
        raise UsageError(f"--fractions must be numbers in (0, 1), got '{fractions}'")
    if latency_groups < 0 or latency_rounds < 1:
        raise UsageError("--latency-groups must be >= 0 and --latency-rounds >= 1")
    check_provider(provider)
    original = load_model(model)
    data = _load_data(data_path, model, original, data_opts)
    if data is None:
        feeds = random_inputs(original, 0)
        data = Dataset({k: np.repeat(v, 64, axis=0) + np.random.default_rng(1).standard_normal(
            (64,) + v.shape[1:]).astype(v.dtype) for k, v in feeds.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    if limit < 1 or probe < 1:
        raise UsageError("--limit and --probe must be >= 1")
    result = sensitivity(original, data, steps, criterion, data_opts["batch_size"], limit, tolerance, probe)
    if not no_latency and latency_groups > 0:
        result.add_latency(original, provider=provider, max_groups=latency_groups, rounds=latency_rounds)
    write_text_atomic(out_dir / "analysis.json", json.dumps(result.to_dict(), indent=1) + "\n")
    plotted = plot(result, out_dir / "sensitivity.png")
    click.echo(format_sensitivity(result))
    click.echo(f"wrote {out_dir / 'analysis.json'}" + (f" and {out_dir / 'sensitivity.png'}" if plotted else
                                                          " (no plot: pip install 'onnxprune[plot]')"))


@cli.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Samples (.npz with optional labels, .npy, or an image folder with class subfolders).")
@click.option("--reference", type=click.Path(path_type=Path), help="Original model: report fidelity to it.")
@click.option("--limit", type=int, help="Evaluate at most N samples.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def eval_cmd(model: Path, data_path: Path, reference: Path | None, limit: int | None, as_json: bool, debug: bool,
             **data_opts) -> None:
    """Evaluate MODEL: top-1 accuracy where labels exist, fidelity to --reference (agreement, cosine, error)."""
    candidate = load_model(model)
    data = _load_data(data_path, model, candidate, data_opts)
    ref = load_model(reference) if reference is not None else None
    result = evaluate(candidate, data, ref, data_opts["batch_size"], limit)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(format_evaluation(result))


register_finetune(cli, data_options, _load_data, _check_outputs)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not args:
        context = click.Context(cli, info_name="onnxprune", help_option_names=["-h", "--help"])
        click.echo(cli.get_help(context), err=True)
        return 2
    try:
        cli.main(args=args, prog_name="onnxprune", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("onnxprune: error: aborted", err=True)
        return 1
    except click.UsageError as exc:
        click.echo(f"onnxprune: error: {exc.format_message()}", err=True)
        return 2
    except OnnxPruneError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"onnxprune: error: {' '.join(str(exc).split())}", err=True)
        return exc.exit_code
    except OSError as exc:  # a file the user named cannot be reached: their problem, not an internal error
        if debug:
            traceback.print_exc()
        where = f": '{exc.filename}'" if getattr(exc, "filename", None) else ""
        click.echo(f"onnxprune: error: {exc.strerror or type(exc).__name__}{where}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("onnxprune: error: interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user sees one line, never a traceback
        if debug:
            traceback.print_exc()
        text = " ".join(str(exc).split())[:500]
        click.echo(f"onnxprune: error: internal error ({type(exc).__name__}: {text}); "
                   "rerun with --debug and report it", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
