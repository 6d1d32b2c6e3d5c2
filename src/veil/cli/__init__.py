"""The ``veil`` command line: ``veil demo | party | stats | audit | serve | bench``.

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

# Subcommand modules, in help order. Each defines ``register(app: typer.Typer) -> None``.
_COMMAND_MODULES = ("demo", "party", "stats", "audit", "serve", "bench")


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


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; VeilErrors become one clear line and a non-zero exit code.

    Usage errors (bad option values) exit with code 2, as click reports them; a
    ``ConfigurationError`` also exits with 2, any other ``VeilError`` with 1.
    """
    try:
        app(args=argv, prog_name="veil", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except VeilError as exc:
        from rich.markup import escape

        Console(stderr=True).print(
            f"[bold red]error:[/bold red] {type(exc).__name__}: {escape(str(exc))}",
            highlight=False,
        )
        return 2 if isinstance(exc, ConfigurationError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
