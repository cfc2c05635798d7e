"""The ``instantid`` command: one typer app; each command group lives in its own module.

Errors derived from :class:`instantid.errors.InstantIDError` become one line on stderr and exit code 2. Any
other exception is a bug, not bad input: one line naming an error id and the file holding its traceback
(:mod:`instantid.internal_errors`), exit code 1.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# The libraries' info/deprecation chatter (torchvision fallbacks, dtype hints) would bury our one-line errors
# and progress bars; set these variables yourself to see it again.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import typer
from typer.core import TyperGroup

from instantid.errors import InstantIDError
from instantid.internal_errors import report


class _InterruptibleGroup(TyperGroup):
    """Ctrl-C is an Abort (``main`` says "interrupted"): typer would turn it into a silent exit code 130 and
    leave the user looking at a stopped progress bar."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Abort() from None


app = typer.Typer(
    name="instantid",
    cls=_InterruptibleGroup,
    help="InstantID: identity-preserving image generation from one face photo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help: rich markup would eat bracketed help text ("[rate=N]") and typer's rich panels show a
    # "<bool>" value for on/off flags, which take none.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from instantid import __version__

        typer.echo(f"instantid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                       help="Show the version and exit.")) -> None:
    pass  # the options of the command group itself (--version); each command does the work

# Command modules register themselves on `app` when imported (each imports its heavy libraries lazily, inside
# its commands, so `instantid --help` stays fast).
_COMMAND_MODULES = ("faces", "generate", "batch", "doctor", "serve", "service", "train", "evaluate", "apps", "download")


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"instantid.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    _register_commands()
    try:
        # Without standalone mode click returns a command's exit code (e.g. typer.Exit(1)) instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except InstantIDError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort) or an aborted prompt
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None:
            show = getattr(exc, "show", None)
            if show:
                show()
            return int(code)
        command = " ".join(sys.argv[1:] if argv is None else argv)
        typer.echo(f"error: {report(exc, None, f'instantid {command}'[:300], to_file=True).line()}", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
