"""The ``onnxprune`` command: the group of subcommands, and the one place where failures become exit codes.

Exit codes: 0 ok, 1 error (bad input, unwritable output), 2 usage, 3 verification failed, 130 interrupted.
Errors are one line, ``onnxprune: error: ...``; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import difflib
import os
import sys
import traceback
from pathlib import Path

import click

from onnxprune import __version__
from onnxprune.cli.analyze import analyze_cmd
from onnxprune.cli.evaluate import eval_cmd
from onnxprune.cli.finetune import finetune_cmd
from onnxprune.cli.inspect import apply_cmd, inspect_cmd
from onnxprune.cli.prune import prune_cmd
from onnxprune.core.progress import progress_mode
from onnxprune.errors import OnnxPruneError, PlanError

__all__ = ["cli", "main", "EXIT_CODES"]

#: Every exit code the command can return.
EXIT_CODES = {0: "ok", 1: "error", 2: "usage", 3: "verification failed", 130: "interrupted"}


class _DefaultToPrune(click.Group):
    """``onnxprune MODEL ...`` means ``onnxprune prune MODEL ...``; its help shows prune's options too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            _check_command_name(args, sorted(self.commands))
            args = ["prune", *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        prune = self.commands["prune"]
        sub = click.Context(prune, info_name="prune", parent=ctx)
        rows = [row for p in prune.get_params(sub)
                if isinstance(p, click.Option) and p.name != "help" and (row := p.get_help_record(sub)) is not None]
        with formatter.section("Prune options (the default command; onnxprune COMMAND --help shows the others)"):
            formatter.write_dl(rows)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("onnxprune", "MODEL [OPTIONS]   (prune: the default command)")
        formatter.write_usage("   or: onnxprune", "COMMAND [ARGS]...", prefix="")


def _check_command_name(args: list[str], commands: list[str]) -> None:
    """A first word that is no file but looks like a command name (``prnue``) is a mistyped command, not a
    model path: say so instead of pruning it."""
    first = args[0]
    if first.startswith("-") or Path(first).exists():
        return
    close = difflib.get_close_matches(first, commands, n=1, cutoff=0.6)
    looks_like_word = "." not in first and "/" not in first and "\\" not in first
    model_follows = len(args) > 1 and not args[1].startswith("-") and Path(args[1]).exists()
    if close:
        raise click.UsageError(f"no such command '{first}' (did you mean '{close[0]}'?)")
    if looks_like_word and model_follows:
        raise click.UsageError(f"no such command '{first}' (commands: {', '.join(commands)})")


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
        with progress_mode("lines"):  # one plain line per step when stderr is piped; --quiet turns it off
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
    if isinstance(exc, click.NoSuchOption):
        return 2, _no_such_option(exc)
    if isinstance(exc, click.UsageError):
        return 2, exc.format_message()
    if isinstance(exc, PlanError):  # a plan file that does not fit is a bad option value: usage
        return 2, " ".join(str(exc).split())
    if isinstance(exc, OnnxPruneError):
        return exc.exit_code, " ".join(str(exc).split())
    if isinstance(exc, OSError):  # a file the user named cannot be reached: their problem, not an internal error
        name = getattr(exc, "filename", None)
        where = f": '{os.path.abspath(name)}'" if isinstance(name, str) and name else ""  # which folder it is
        return 1, f"{exc.strerror or type(exc).__name__}{where}"
    text = " ".join(str(exc).split())[:500]
    return 1, f"internal error ({type(exc).__name__}: {text}); rerun with --debug and report it"


def _no_such_option(exc: click.NoSuchOption) -> str:
    """``no such option '--ratoi' (did you mean '--ratio'?)``: the closest long option of the command, compared
    without the leading dashes (click compares with them and ranks '--data' next to '--ratio')."""
    names = list(exc.possibilities or [])
    command = exc.ctx.command if exc.ctx is not None else None
    if command is not None:
        names = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    bare = {n.lstrip("-"): n for n in names}
    best = difflib.get_close_matches(exc.option_name.lstrip("-"), list(bare), n=1, cutoff=0.6)
    hint = f" (did you mean '{bare[best[0]]}'?)" if best else ""
    where = f"onnxprune {command.name} --help" if command is not None and command.name else "onnxprune --help"
    return f"no such option '{exc.option_name}'{hint}; see {where}"
