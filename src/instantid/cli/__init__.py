"""The ``instantid`` command: one typer app; each command group lives in its own module.

Errors derived from :class:`instantid.errors.InstantIDError` become one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

# The libraries' info/deprecation chatter (torchvision fallbacks, dtype hints) would bury our one-line errors
# and progress bars; set these variables yourself to see it again.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import typer

from instantid.errors import InstantIDError

app = typer.Typer(
    name="instantid",
    help="InstantID: identity-preserving image generation from one face photo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules register themselves on `app` when imported; a module that is not written yet is
# simply absent, so the list can name every planned group.
_COMMAND_MODULES = ("faces", "generate", "serve", "service", "train", "evaluate", "apps", "download")


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"instantid.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"instantid.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    _register_commands()
    try:
        # Without standalone mode click returns a command's exit code (e.g. typer.Exit(1)) instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except InstantIDError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
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
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
