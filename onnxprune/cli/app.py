"""The ``onnxprune`` command: the group of subcommands, and the one place where failures become exit codes.

Exit codes: 0 ok, 1 error (bad input, unwritable output), 2 usage, 3 verification failed, 130 interrupted.
Errors are one line, ``onnxprune: error: ...``; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import sys
import traceback

import click

from onnxprune import __version__
from onnxprune.cli.analyze import analyze_cmd
from onnxprune.cli.evaluate import eval_cmd
from onnxprune.cli.finetune import finetune_cmd
from onnxprune.cli.inspect import apply_cmd, inspect_cmd
from onnxprune.cli.prune import prune_cmd
from onnxprune.errors import OnnxPruneError

__all__ = ["cli", "main", "EXIT_CODES"]

#: Every exit code the command can return.
EXIT_CODES = {0: "ok", 1: "error", 2: "usage", 3: "verification failed", 130: "interrupted"}


class _DefaultToPrune(click.Group):
    """``onnxprune MODEL ...`` means ``onnxprune prune MODEL ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".")
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


for _command in (prune_cmd, inspect_cmd, apply_cmd, analyze_cmd, eval_cmd, finetune_cmd):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        context = click.Context(cli, info_name="onnxprune", help_option_names=["-h", "--help"])
        click.echo(cli.get_help(context), err=True)
        return 2
    try:
        cli.main(args=args, prog_name="onnxprune", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except (Exception, KeyboardInterrupt) as exc:  # every failure becomes one line and an exit code
        code, message = _failure(exc)
        if "--debug" in args and not isinstance(exc, (click.exceptions.Abort, click.UsageError, KeyboardInterrupt)):
            traceback.print_exc()
        click.echo(f"onnxprune: error: {message}", err=True)
        return code


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for a failure."""
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, click.exceptions.Abort) and
                                              isinstance(exc.__cause__, KeyboardInterrupt)):
        return 130, "interrupted"
    if isinstance(exc, click.exceptions.Abort):
        return 1, "aborted"
    if isinstance(exc, click.UsageError):
        return 2, exc.format_message()
    if isinstance(exc, OnnxPruneError):
        return exc.exit_code, " ".join(str(exc).split())
    if isinstance(exc, OSError):  # a file the user named cannot be reached: their problem, not an internal error
        where = f": '{exc.filename}'" if getattr(exc, "filename", None) else ""
        return 1, f"{exc.strerror or type(exc).__name__}{where}"
    text = " ".join(str(exc).split())[:500]
    return 1, f"internal error ({type(exc).__name__}: {text}); rerun with --debug and report it"
