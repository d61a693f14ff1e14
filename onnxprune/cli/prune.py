"""``onnxprune prune`` (also plain ``onnxprune MODEL``): prune, verify, write the model, plan and report."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import onnx

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from onnxprune.cli.format import format_summary, summary_document
from onnxprune.cli.options import (
    data_options,
    finetune_config,
    load_command_data,
    parse_round_to,
    parse_shapes,
    training_options,
)
from onnxprune.cli.paths import check_fraction, check_model_path, output_folders
from onnxprune.core.modelio import check_outputs, file_sha256, load_model, write_outputs
from onnxprune.core.progress import progress_mode
from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset
from onnxprune.measure.runtime import CPU, check_provider
from onnxprune.pipeline.options import DEFAULT_DATA_CRITERION, SCHEDULES, TRAINING_SCHEDULES, PruneConfig
from onnxprune.pipeline.pruning import PruneResult, StepHooks, prune
from onnxprune.pipeline.report import established
from onnxprune.pipeline.resources import Stages, check_fits
from onnxprune.pipeline.search import prune_to_latency, prune_within
from onnxprune.planning.criteria import names as criterion_names
from onnxprune.rewriting.recover import RECOVERY_MODES
from onnxprune.training.devices import check_device
from onnxprune.training.finetune import FinetuneConfig
from onnxprune.training.schedules import training_hooks
from onnxprune.tuning.quantize import QUANTIZE_MODES, check_not_quantized, quantize_result, unrecovered_note

__all__ = ["prune_cmd"]


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
        if p.name is None or p.name in ("config_path", "debug"):
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


@click.command("prune")
@click.option("--config", "config_path", type=click.Path(path_type=Path), is_eager=True,
              callback=_read_config, help="TOML file pinning options (keys = long option names); flags override.")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: <stem>.pruned.onnx].")
@click.option("--ratio", type=float, default=0.5, show_default=True,
              help="Fraction of the channels removed from every prunable group, in [0, 1).")
@click.option("--head-ratio", type=float, metavar="R",
              help="Fraction of the attention heads removed [default: --ratio].")
@click.option("--mlp-ratio", type=float, metavar="R",
              help="Fraction of the hidden features of linear layers (MLP width) removed [default: --ratio].")
@click.option("--hidden-ratio", type=float, metavar="R",
              help="Fraction of a transformer's hidden width (residual stream) removed [default: --ratio].")
@click.option("--channel-ratio", type=float, metavar="R",
              help="Fraction of the convolution channels removed [default: --ratio].")
@click.option("--criterion", type=click.Choice(criterion_names()),
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
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES),
              help="End with int8 quantization by onnxruntime: static (QDQ, per-channel, calibrated on --calib) or "
                   "dynamic; checked, and compared with the float pruned model on --eval.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune_cmd(model: Path, **options: Any) -> None:
    """Prune MODEL and write a smaller, verified model."""
    o = options
    with progress_mode("off" if o["quiet"] else "lines"):
        _prune_command(check_model_path(model), o)


def _prune_command(model: Path, o: dict[str, Any]) -> None:
    training = finetune_config(o, o["batch_size"], o["seed"])
    output: Path = o["output"] or model.with_name(model.stem + ".pruned.onnx")
    check_provider(o["provider"])
    check_fraction("--target-macs", o["target_macs"])
    check_fraction("--target-params", o["target_params"])
    if o["quantize"] == "static" and o["calib"] is None:  # before pruning, not after
        raise UsageError("--quantize static calibrates on --calib samples: give --calib, or use --quantize dynamic")
    config = _prune_config(o)
    trains = o["schedule"] in TRAINING_SCHEDULES
    config.resolved(o["calib"] is not None or (trains and o["train_path"] is not None))
    if trains and (o["target_latency"] is not None or o["max_drop"] is not None):
        raise UsageError(f"--schedule {o['schedule']} works with --ratio; not with --target-latency or --max-drop")
    if trains:
        check_device(training.device)
    outputs = [p for p in (output, o["plan_path"], o["report_path"]) if p is not None]
    with output_folders(outputs):
        check_outputs(model, outputs)
        stages = Stages()
        with stages.stage("load"):
            original = load_model(model)
        if o["quantize"]:
            check_not_quantized(original, o["quantize"])
        check_fits(original, str(model), "train" if trains else "none" if config.verify is False and o["calib"] is None
                   else "calib" if o["calib"] is not None else "verify")
        result = _run(model, original, config, training, o, stages)
        if o["quantize"]:  # the last step: quantize the pruned (and recovered) model
            result = quantize_result(result, original, o["quantize"], load_command_data(o["calib"], model, original, o),
                                     load_command_data(o["eval_path"], model, original, o),
                                     batch_size=o["batch_size"], seed=o["seed"], input_shapes=config.input_shapes)
        write_outputs(result.model, output, lambda written: _documents(result, model, output, written, o, stages),
                      source=original)
    if o["as_json"]:
        click.echo(json.dumps(summary_document(result.report, o["plan_path"], o["report_path"])))
    elif not o["quiet"]:
        click.echo(f"onnxprune: {model} -> {output}", err=True)
        click.echo(format_summary(result.report), err=True)
        note = unrecovered_note(original, result.report) if o["calib"] is not None else None
        if note:
            click.echo(note, err=True)


def _prune_config(o: dict[str, Any]) -> PruneConfig:
    """The :class:`PruneConfig` the command-line options describe."""
    return PruneConfig(ratio=o["ratio"], criterion=o["criterion"], global_ranking=o["global_ranking"],
                       round_to=parse_round_to(o["round_to"]), min_channels=o["min_channels"],
                       exclude=tuple(o["exclude"]), seed=o["seed"], verify=not o["no_verify"],
                       input_shapes=parse_shapes(o["input_shape"]), recover=o["recover"],
                       calib_samples=o["calib_samples"], batch_size=o["batch_size"], schedule=o["schedule"],
                       step=o["step"], tolerance=o["tolerance"], target_macs=o["target_macs"],
                       target_params=o["target_params"], kind_ratios=_kind_ratios(o))


def _kind_ratios(o: dict[str, Any]) -> dict[str, float] | None:
    """The per-kind ratios given (``--head-ratio`` ...), by group kind."""
    given = {kind: o[f"{option}_ratio"] for kind, option in (("head", "head"), ("mlp", "mlp"), ("hidden", "hidden"),
                                                               ("channels", "channel"))
             if o.get(f"{option}_ratio") is not None}
    return given or None


def _run(model: Path, original: onnx.ModelProto, config: PruneConfig, training: FinetuneConfig,
         o: dict[str, Any], stages: Stages | None = None) -> PruneResult:
    """Load the data the options name and prune: to a latency, within an accuracy drop, or by the config."""
    calib = load_command_data(o["calib"], model, original, o)
    eval_data = load_command_data(o["eval_path"], model, original, o)
    calib, hooks = _training(model, original, calib, eval_data, training, o)
    config = config.measure_round_to(original, provider=o["provider"])
    sha = file_sha256(model)
    if o["target_latency"] is not None:
        if o["max_drop"] is not None or o["target_macs"] is not None or o["target_params"] is not None:
            raise UsageError("give one budget: --target-latency, --target-macs, --target-params or --max-drop")
        return prune_to_latency(original, config, o["target_latency"], calib=calib, eval_data=eval_data,
                                source_sha256=sha, provider=o["provider"])
    if o["max_drop"] is not None:
        if eval_data is None:
            raise UsageError("--max-drop needs evaluation data (--eval)")
        return prune_within(original, config, o["max_drop"], eval_data, calib=calib, source_sha256=sha)
    return prune(original, config, calib=calib, eval_data=eval_data, source_sha256=sha, hooks=hooks, stages=stages)


def _training(model: Path, original: onnx.ModelProto, calib: Dataset | None, eval_data: Dataset | None,
              training: FinetuneConfig, o: dict[str, Any]) -> tuple[Dataset | None, StepHooks | None]:
    """(calibration data, training hooks): a training schedule trains on --data and scores on it too."""
    train = load_command_data(o["train_path"], model, original, o)
    if o["schedule"] in TRAINING_SCHEDULES:
        hooks = training_hooks(o["schedule"], original, train, eval_data, training, o["kappa"], o["alpha"])
        return calib or train, hooks
    if train is not None:
        raise UsageError("--data (training samples) needs --schedule dropnet or auto-balanced; "
                         "use --calib for calibration")
    return calib, None


def _documents(result: PruneResult, model: Path, output: Path, written: list[Path], o: dict[str, Any],
               stages: Stages | None = None) -> list[tuple[Path | None, str]]:
    """The plan and report to write beside the model (the report learns the files' paths and sizes, and the
    time and memory of every stage up to the model's files written)."""
    result.report["input"] = {"path": str(model), "bytes": model.stat().st_size}
    result.report["output"] = {"path": str(output), "bytes": sum(p.stat().st_size for p in written)}
    calibrated = o["calib"] is not None or (o["schedule"] in TRAINING_SCHEDULES and o["train_path"] is not None)
    result.report["established"] = established(result.report, calibrated)
    if stages is not None and "resources" in result.report:
        stages.mark("write model")
        result.report["resources"] = stages.to_dict()
    if o["config_path"] is not None:
        result.report["config_file"] = {"path": str(o["config_path"]), "sha256": file_sha256(o["config_path"])}
    return [(o["plan_path"], result.plan.to_json()),
            (o["report_path"], json.dumps(result.report, indent=1) + "\n")]

