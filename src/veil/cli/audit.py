"""``veil audit``: check a release audit log (``verify FILE``) and make its HMAC key.

``veil audit key new FILE`` writes a random key sealed under a passphrase or key file (see
:mod:`veil.trust.seal`); ``veil audit key seal FILE`` seals a legacy plain key file in place.
A sealed key is opened with ``--passphrase-env VAR``, ``--passphrase-file FILE`` or
``--seal-key-file FILE``, else ``VEIL_PASSPHRASE`` / ``VEIL_KEY_FILE``, else a prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from veil.errors import ConfigurationError

audit_app = typer.Typer(help="Inspect and verify release audit logs; make their keys.",
                        no_args_is_help=True)
key_app = typer.Typer(help="Audit HMAC keys, sealed at rest under a passphrase or key file.",
                      no_args_is_help=True)
audit_app.add_typer(key_app, name="key")

# How a sealed audit key is opened (shared with `veil stats`). Without any of them:
# VEIL_PASSPHRASE or VEIL_KEY_FILE, else a prompt on a terminal.
PASSPHRASE_ENV_OPTION = typer.Option(
    None, "--passphrase-env", metavar="VAR",
    help="the audit key's passphrase is in environment variable VAR (default: VEIL_PASSPHRASE)")
PASSPHRASE_FILE_OPTION = typer.Option(
    None, "--passphrase-file", metavar="FILE",
    help="the audit key's passphrase is FILE's first line")
SEAL_KEY_FILE_OPTION = typer.Option(
    None, "--seal-key-file", metavar="FILE",
    help="the audit key is sealed under this 32-byte key file (`veil identity key-file new`; "
         "default: VEIL_KEY_FILE)")
_SOURCES = ("--passphrase-env VAR, --passphrase-file FILE or --seal-key-file FILE, or set "
            "VEIL_PASSPHRASE or VEIL_KEY_FILE")


def resolve_secret(passphrase_env: str | None, passphrase_file: Path | None,
                   seal_key_file: Path | None, *, what: str, confirm: bool = False) -> Any:
    """The :class:`~veil.trust.seal.Secret` these options name, else the environment's, else
    (on a terminal) a typed passphrase, asked twice with ``confirm``."""
    import getpass
    import os
    import sys

    from veil.trust.seal import KEY_FILE_ENV, PASSPHRASE_ENV, Secret

    given = [flag for flag, value in (("--passphrase-env", passphrase_env),
                                      ("--passphrase-file", passphrase_file),
                                      ("--seal-key-file", seal_key_file)) if value is not None]
    if len(given) > 1:
        raise ConfigurationError(f"give one of {', '.join(given)}, not several")
    if given or os.environ.get(PASSPHRASE_ENV) or os.environ.get(KEY_FILE_ENV):
        return Secret.resolve(passphrase_env=passphrase_env, passphrase_file=passphrase_file,
                              key_file=seal_key_file)
    if not sys.stdin.isatty():
        raise ConfigurationError(f"{what} needs a passphrase or key and there is no terminal to "
                                 f"ask for one; pass {_SOURCES}")
    first = getpass.getpass(f"Passphrase for {what}: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise ConfigurationError("the two passphrases differ; run the command again")
    return Secret.passphrase(first)


def check_unused_sources(flag: str, passphrase_env: str | None, passphrase_file: Path | None,
                         seal_key_file: Path | None) -> None:
    """Refuse a passphrase or seal key option given without the key file ``flag`` it opens."""
    given = [name for name, value in (("--passphrase-env", passphrase_env),
                                      ("--passphrase-file", passphrase_file),
                                      ("--seal-key-file", seal_key_file)) if value is not None]
    if given:
        raise ConfigurationError(f"{given[0]} opens a sealed audit key: give {flag} FILE too "
                                 f"(or drop {given[0]})")


def read_key_file(path: Path, flag: str = "--key-file", *, passphrase_env: str | None = None,
                  passphrase_file: Path | None = None,
                  seal_key_file: Path | None = None) -> bytes:
    """The HMAC key held in ``path``: a sealed file (opened with the secret the options name,
    asked for only then) or a legacy plain file (its raw bytes; warns). ConfigurationError
    messages name ``flag``."""
    from veil.privacy.audit import read_key_file as read_key

    def secret() -> Any:
        return resolve_secret(passphrase_env, passphrase_file, seal_key_file,
                              what=f"{flag} {path}")

    return read_key(path, secret, what=flag)


@key_app.command("new")
def key_new_cmd(
    path: Annotated[Path, typer.Argument(help="the new key file (never overwritten)")],
    passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    seal_key_file: Path | None = SEAL_KEY_FILE_OPTION,
) -> None:
    """Make an audit key: 32 random bytes, sealed (mode 0600). Pass it as --audit-key-file to
    `veil stats` and as --key-file to `veil audit verify`."""
    from veil.privacy.audit import new_key_file

    secret = resolve_secret(passphrase_env, passphrase_file, seal_key_file,
                            what=f"the new audit key {path}", confirm=True)
    typer.echo(f"audit key: {new_key_file(path, secret)} (sealed with a {secret.kind}, mode "
               "0600; losing it or its passphrase means keyed logs can no longer be verified)")


@key_app.command("seal")
def key_seal_cmd(
    path: Annotated[Path, typer.Argument(help="a plain (unencrypted) audit key file")],
    passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    seal_key_file: Path | None = SEAL_KEY_FILE_OPTION,
) -> None:
    """Seal a plain audit key file in place (the key is unchanged: its logs still verify)."""
    from veil.privacy.audit import seal_key_file as seal_file

    secret = resolve_secret(passphrase_env, passphrase_file, seal_key_file,
                            what=f"the audit key {path}", confirm=True)
    typer.echo(f"audit key: {seal_file(path, secret)} (sealed with a {secret.kind}, mode 0600)")


@audit_app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="audit log (JSON lines)")],
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="the HMAC key file the log was written with (sealed by `veil audit "
                           "key new`; a legacy plain file is read with a warning)")] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="expected hash of the last entry, kept elsewhere (overrides FILE.head)")
    ] = None,
    passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    seal_key_file: Path | None = SEAL_KEY_FILE_OPTION,
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
    if key_file is None:
        check_unused_sources("--key-file", passphrase_env, passphrase_file, seal_key_file)
    key = read_key_file(key_file, passphrase_env=passphrase_env, passphrase_file=passphrase_file,
                        seal_key_file=seal_key_file) if key_file is not None else None
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
