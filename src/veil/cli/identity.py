"""``veil identity``: make and inspect party identities and key files (``veil.trust``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from veil.trust.seal import Secret

_PASSPHRASE_ENV = typer.Option(
    None, "--passphrase-env", metavar="VAR",
    help="read the passphrase from environment variable VAR")
_PASSPHRASE_FILE = typer.Option(
    None, "--passphrase-file", metavar="FILE", help="read the passphrase from FILE's first line")
_KEY_FILE = typer.Option(
    None, "--key-file", metavar="FILE",
    help="seal under a 32-byte key file instead (`veil identity key-file new FILE`)")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Party identities: a P-256 key (sealed at rest) and a certificate.",
                        no_args_is_help=True)
    key_files = typer.Typer(help="Key files: 32 random bytes that can seal keys instead of a "
                            "passphrase.", no_args_is_help=True)
    group.add_typer(key_files, name="key-file")
    app.add_typer(group, name="identity")

    @group.command("new")
    def identity_new(
        name: str = typer.Argument(..., help="the party's name (letters, digits, '_', '.', '-')"),
        directory: Path = typer.Option(Path("."), "--dir", help="folder for NAME.key and "
                                       "NAME.crt (made 0700 if missing)"),
        days: int = typer.Option(825, "--days", min=1, max=3650,
                                 help="days the certificate is valid"),
        passphrase_env: str | None = _PASSPHRASE_ENV,
        passphrase_file: Path | None = _PASSPHRASE_FILE,
        key_file: Path | None = _KEY_FILE,
    ) -> None:
        """Make identity NAME: NAME.key (sealed private key) and NAME.crt (give it to peers)."""
        from veil.trust.identity import Identity

        secret = _new_secret(name, passphrase_env, passphrase_file, key_file)
        ident = Identity.new(name, days=days)
        key_path, cert_path = ident.save(directory, secret)
        typer.echo(f"key:         {key_path} (sealed with a {secret.kind}, mode 0600)")
        typer.echo(f"certificate: {cert_path}")
        typer.echo(f"fingerprint: {ident.fingerprint}")

    @group.command("show")
    def identity_show(
        certificate: Path = typer.Argument(..., help="a certificate (.crt) file"),
    ) -> None:
        """Print a certificate's name, fingerprint and validity."""
        import datetime

        from cryptography import x509
        from cryptography.x509.oid import NameOID

        from veil.trust.identity import fingerprint_of, load_certificate

        pem = load_certificate(certificate)
        cert = x509.load_pem_x509_certificate(pem)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        now = datetime.datetime.now(datetime.UTC)
        state = "expired" if now > end else "not yet valid" if now < start else "valid"
        typer.echo(f"name:        {names[0].value if names else '(none)'}")
        typer.echo(f"fingerprint: {fingerprint_of(pem)}")
        typer.echo(f"valid from:  {start.isoformat()}")
        typer.echo(f"valid until: {end.isoformat()} ({state})")

    @key_files.command("new")
    def key_file_new(
        path: Path = typer.Argument(..., help="the new key file (never overwritten)"),
    ) -> None:
        """Make a key file (mode 0600): pass it as --key-file to seal identities under it."""
        from veil.trust.seal import new_key_file

        typer.echo(f"key file: {new_key_file(path)} (mode 0600; keep a copy somewhere safe)")


def _new_secret(name: str, passphrase_env: str | None, passphrase_file: Path | None,
                key_file: Path | None) -> Secret:
    """The secret to seal a new key under: the option given, the environment, or a prompt."""
    import getpass

    from veil.errors import ConfigurationError
    from veil.trust.seal import KEY_FILE_ENV, PASSPHRASE_ENV, Secret

    named = (passphrase_env, passphrase_file, key_file)
    if any(v is not None for v in named) or os.environ.get(PASSPHRASE_ENV) or \
            os.environ.get(KEY_FILE_ENV):
        return Secret.resolve(passphrase_env=passphrase_env, passphrase_file=passphrase_file,
                              key_file=key_file)
    if not sys.stdin.isatty():
        raise ConfigurationError(
            "no passphrase given and no terminal to ask for one; pass --passphrase-env VAR, "
            f"--passphrase-file FILE or --key-file FILE, or set {PASSPHRASE_ENV}")
    first = getpass.getpass(f"Passphrase for {name}.key: ")
    if getpass.getpass("Repeat the passphrase: ") != first:
        raise ConfigurationError("the two passphrases differ; run the command again")
    return Secret.passphrase(first)
