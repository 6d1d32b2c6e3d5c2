"""``veil audit verify FILE``: check a release audit log's hash chain and anchor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veil.errors import ConfigurationError

audit_app = typer.Typer(help="Inspect and verify release audit logs.", no_args_is_help=True)

MAX_KEY_FILE_BYTES = 4096


def read_key_file(path: Path, flag: str = "--key-file") -> bytes:
    """The HMAC key held in ``path`` (its raw bytes); ConfigurationError naming ``flag``."""
    from veil.privacy.audit import MIN_KEY_BYTES

    if not path.exists():
        raise ConfigurationError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise ConfigurationError(f"{flag} {path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            key = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    if len(key) > MAX_KEY_FILE_BYTES:
        raise ConfigurationError(f"{flag} {path}: over {MAX_KEY_FILE_BYTES} bytes; is it the key "
                                 "file? (e.g. head -c 32 /dev/urandom > audit.key)")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"{flag} {path}: {len(key)} bytes, a key needs at least "
                                 f"{MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom > audit.key)")
    return key


@audit_app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="audit log (JSON lines)")],
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="file holding the HMAC key the log was written with (its raw bytes)")
    ] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="expected hash of the last entry, kept elsewhere (overrides FILE.head)")
    ] = None,
) -> None:
    """Detect edited, reordered, inserted or deleted entries (and a truncated tail).

    Exit 0: the log checks out; 1: it does not (one FAIL line says why); 2: bad arguments.
    """
    from rich.console import Console
    from rich.markup import escape

    from veil.privacy import verify

    if not file.exists():
        raise ConfigurationError(f"{file}: no such file; give the audit log's path (the file "
                                 "passed to --audit)")
    if not file.is_file():
        raise ConfigurationError(f"{file} is not a regular file; give the audit log's path "
                                 "(the file passed to --audit)")
    if head is not None:
        head = head.strip().lower()
        if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
            raise ConfigurationError(f"--head must be the 64 hex digits of the last entry's "
                                     f"hash, got {head!r}")
    key = read_key_file(key_file) if key_file is not None else None
    console = Console(soft_wrap=True)
    report = verify(file, key=key, head=head)
    if report.ok:
        if report.keyed:
            mode = ("HMAC-keyed, anchor authenticated" if report.anchored and head is None else
                    "HMAC-keyed, matches --head")
            mode += ("; a rollback of both files to an older copy shows only against a head "
                     "kept elsewhere (--head)" if head is None else "")
        else:
            mode = ("unkeyed: this proves only that the log is internally consistent; anyone "
                    "who can write it can rewrite it and its anchor (use --key-file, or --head "
                    "with a hash kept elsewhere)")
            if not report.anchored:
                mode = "no anchor, so a truncated tail is undetectable; " + mode
        console.print(f"[green]OK[/green] {escape(str(file))}: {report.entries} entries, head "
                      f"{report.head[:16]}… ({mode})", highlight=False)
        return
    console.print(f"[red]FAIL[/red] {escape(str(file))}: {escape(report.problems[0])}",
                  highlight=False)
    raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
