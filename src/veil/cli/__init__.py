"""The ``veil`` command line: ``veil demo | party | identity | stats | audit | serve | bench``.

Each subcommand lives in its own module of this package with a ``register(app)`` function, so
commands stay small and independent. Heavy imports (torch, crypten, tenseal) happen inside the
commands, never at import time, so ``veil --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from veil.errors import ConfigurationError, VeilError

app = typer.Typer(
    name="veil",
    help="Veil: compute jointly on data nobody shows, and run models on data nobody can read.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# Subcommand modules, in help order. Each defines ``register(app: typer.Typer) -> None``.
_COMMAND_MODULES = ("demo", "party", "identity", "stats", "audit", "serve", "bench")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"veil.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"veil.cli.{name}":
                continue  # that command is not part of this build
            raise
        module.register(app)


_register_all()


def _version_callback(value: bool) -> None:
    if value:
        from veil import __version__

        typer.echo(f"veil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version_callback,
                                 help="Print Veil's version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="Log progress to stderr: -v phases, time, bytes and "
                                     "rounds per phase; -vv debug."),
) -> None:
    """Veil: compute jointly on data nobody shows, and run models on data nobody can read."""
    from veil.cli.logs import configure

    configure(verbose)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error(message: str) -> None:
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/bold red] {escape(message)}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: every failure is one line on stderr and an exit code.

    Usage errors (bad option values) exit with 2, as click's do; a ``ConfigurationError`` also
    exits with 2, any other ``VeilError`` and a failed file operation with 1, an interrupt
    (Ctrl-C) with 130.
    """
    from veil.mpc.host import honour_sigint

    honour_sigint()  # SIGINT stops the run even if this process started with it ignored
    try:
        code = app(args=argv, prog_name="veil", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except typer.Abort:
        _error("aborted")
        return 1
    except typer.TyperException as exc:  # click's usage errors
        return _usage_error(exc)
    except VeilError as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return 2 if isinstance(exc, ConfigurationError) else 1
    except OSError as exc:  # a path the command did not check up front
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _error(f"{type(exc).__name__}: {exc.strerror or exc}{where}")
        return 1
    code = code if isinstance(code, int) else 0
    if code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into exit code 130
        Console(stderr=True, soft_wrap=True).print("interrupted", highlight=False)
    return code


def _usage_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # `veil` or `veil bench` alone: the help
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return 2
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _error(_one_line(exc.format_message()) + hint)
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
