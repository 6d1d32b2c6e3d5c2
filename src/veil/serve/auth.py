"""Transport security of the inference server: API tokens, TLS contexts, loopback checks.

API tokens (``veil serve token new NAME --secret-file F``) read ``NAME.<id>.<tag>``: ``NAME``
is the client's identity, ``<id>`` 128 random bits (``secrets``) and ``<tag>`` the hex
HMAC-SHA256 of ``NAME.<id>`` under the server's 256-bit secret, kept in a 0600 file. The server
keeps no list of tokens: any token whose tag verifies (compared with ``hmac.compare_digest``)
authenticates ``NAME``; rotating the secret revokes every token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
from pathlib import Path

from veil.errors import ConfigurationError

__all__ = ["load_secret", "new_token",
           "verify_token", "is_loopback", "client_tls_context", "SECRET_BYTES"]

SECRET_BYTES = 32
_LABEL = b"veil.serve.token.v1|"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def load_secret(path: str | Path, *, create: bool = False) -> bytes:
    """The server's token secret from ``path``; with ``create``, made (0600) if missing."""
    p = Path(path)
    if create and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
    try:
        text = p.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError:
        raise ConfigurationError(
            f"token secret file {str(p)!r} does not exist; create it with `veil serve token "
            f"new NAME --secret-file {p}`") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"token secret file {str(p)!r} is unreadable or not {SECRET_BYTES} bytes of hex "
            f"({type(exc).__name__})") from None
    if len(secret) != SECRET_BYTES:
        raise ConfigurationError(
            f"token secret file {str(p)!r} must hold {SECRET_BYTES} bytes of hex, it holds "
            f"{len(secret)}")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        raise ConfigurationError(
            f"token secret file {str(p)!r} is readable by other users; chmod 600 it")
    return secret


def _tag(secret: bytes, body: str) -> str:
    return hmac.new(secret, _LABEL + body.encode("ascii"), hashlib.sha256).hexdigest()


def new_token(name: str, secret: bytes) -> str:
    """A fresh token for client ``name`` (letters, digits, ``-`` and ``_``, at most 64)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"client name must be 1-64 letters, digits, '-' or '_', got {name!r:.80}")
    body = f"{name}.{secrets.token_hex(16)}"
    return f"{body}.{_tag(secret, body)}"


def verify_token(token: str, secret: bytes) -> str | None:
    """The client name a valid ``token`` authenticates, or ``None``."""
    parts = token.split(".")
    if len(parts) != 3 or not _NAME.match(parts[0]) or len(token) > 256 or not token.isascii():
        return None
    body = f"{parts[0]}.{parts[1]}"
    if hmac.compare_digest(_tag(secret, body), parts[2]):
        return parts[0]
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine's loopback interface only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_tls_context(ca: str | Path | None) -> ssl.SSLContext:
    """Verifying client context: the system CAs, or only ``ca`` (a PEM file); TLS 1.2 or later."""
    if ca is not None and not Path(ca).is_file():
        raise ConfigurationError(f"ca={str(ca)!r} is not a file (a PEM CA certificate)")
    try:
        ctx = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except ssl.SSLError as exc:
        raise ConfigurationError(f"ca={str(ca)!r} is not a PEM certificate: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
