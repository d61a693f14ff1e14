"""``onnxprune inspect`` (the channel groups and what blocks them) and ``onnxprune apply`` (re-apply a plan)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from onnxprune.analysis.dependency import analyze
from onnxprune.cli.format import format_groups, format_summary
from onnxprune.cli.options import parse_shapes
from onnxprune.cli.paths import check_model_path, output_folders
from onnxprune.core.graph import Graph, static_input_shapes
from onnxprune.core.modelio import check_outputs, load_model, write_outputs
from onnxprune.core.progress import progress_mode
from onnxprune.errors import UsageError
from onnxprune.measure.stats import group_rows, model_stats
from onnxprune.pipeline.pruning import apply_plan
from onnxprune.pipeline.report import file_entry, tool
from onnxprune.planning.plan import Plan

__all__ = ["inspect_cmd", "apply_cmd"]


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224", help="Concrete shape for MAC counts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect_cmd(model: Path, as_json: bool, input_shape: tuple[str, ...], debug: bool) -> None:
    """Show MODEL's channel groups: sizes, MACs, and what blocks each group and why."""
    original = load_model(check_model_path(model))
    graph = Graph.build(original)
    analysis = analyze(graph)
    stats = model_stats(original, static_input_shapes(original, parse_shapes(input_shape)))
    rows = group_rows(analysis, {}, stats.macs_per_node)
    if as_json:
        click.echo(json.dumps({"tool": tool(), "command": "inspect", "input": file_entry(model), "output": None,
                               "model": str(model), "params": stats.params, "macs": stats.macs, "groups": rows},
                              indent=1))
    else:
        click.echo(format_groups(rows, stats.macs))


@click.command("apply")
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
    output = output or check_model_path(model).with_name(model.stem + ".pruned.onnx")
    try:
        text = plan_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read plan '{plan_path}': {exc.strerror or exc}") from exc
    plan = Plan.from_json(text)
    outputs = [p for p in (output, report_path) if p is not None]
    with progress_mode("off" if quiet else "lines"), output_folders(outputs):
        check_outputs(model, outputs)
        original = load_model(model)
        result = apply_plan(original, plan, verify_result=not no_verify, seed=seed,
                            input_shapes=parse_shapes(input_shape))
        write_outputs(result.model, output,
                      lambda written: [(report_path, json.dumps(result.report, indent=1) + "\n")])
    if not quiet:
        click.echo(f"onnxprune: {model} -> {output} (plan {plan_path})", err=True)
        click.echo(format_summary(result.report), err=True)
