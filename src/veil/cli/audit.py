"""``veil audit verify FILE``: check a release audit log's hash chain and anchor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

audit_app = typer.Typer(help="Inspect and verify release audit logs.", no_args_is_help=True)


@audit_app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="audit log (JSON lines)")],
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="HMAC key the log was written with")] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="expected hash of the last entry (overrides FILE.head)")] = None,
) -> None:
    """Detect edited, reordered, inserted or deleted entries (and a truncated tail)."""
    from rich.console import Console

    from veil.privacy import verify

    console = Console()
    key = key_file.read_bytes() if key_file else None
    report = verify(file, key=key, head=head)
    if report.ok:
        anchor = "anchored" if report.anchored else "no anchor: tail truncation undetectable"
        console.print(f"[green]OK[/green] {file}: {report.entries} entries, head "
                      f"{report.head[:16]}… ({anchor})", highlight=False)
        return
    for problem in report.problems:
        console.print(f"[red]FAIL[/red] {file}: {problem}", highlight=False)
    raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
