"""Field checks for session manifests: names, numbers, addresses, fingerprints, certificates.

Internal to :mod:`veil.trust`; :mod:`veil.trust.manifest` is the public face. Every check raises
a :class:`~veil.errors.ConfigurationError` built by :class:`Where`, which names the manifest,
the member and the field, shows the bad value and says how to fix it.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from veil.errors import ConfigurationError

__all__ = ["Where", "show", "check_keys", "text_field", "integer", "valid_name",
           "timeout_seconds", "valid_host", "valid_port", "split_address", "normal_fingerprint",
           "read_certificate", "canonical_certificate", "pinned_certificate",
           "FINGERPRINT_PREFIX", "PEM_BEGIN", "MAX_CERTIFICATE_BYTES", "MAX_TIMEOUT"]

MAX_CERTIFICATE_BYTES = 64 * 1024
MAX_TIMEOUT = 3600.0
FINGERPRINT_PREFIX = "sha256:"
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PORT = re.compile(r"[0-9]{1,5}")


class Where:
    """Where a problem is: the file and the member or table; builds the messages."""

    def __init__(self, source: str | None, what: str) -> None:
        self.source = source or "session manifest"
        self.what = what

    def error(self, key: str | None, problem: str, fix: str) -> ConfigurationError:
        at = f"{self.what}, field {key!r}" if key else self.what
        return ConfigurationError(f"{self.source}: {at}: {problem}; {fix}")


def show(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (a pasted certificate stays readable)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_keys(table: Any, allowed: Sequence[str], required: Sequence[str], where: Where,
               hint: str = "") -> None:
    """Refuse a non-table, unknown keys (suggesting the closest allowed one) and missing keys."""
    if not isinstance(table, dict):
        raise where.error(None, f"expected a table, got {show(table)}",
                          hint or "write it as a [table] of keys")
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            fix = (f"did you mean {close[0]!r}?" if close
                   else f"the keys allowed here are {', '.join(allowed)}")
            if key == "rank" and "rank" not in allowed:
                fix = "the dealer takes rank n (the number of parties) by itself: remove 'rank'"
            raise where.error(str(key), "unknown key", fix)
    tables = {"session": "add a [session] table with the session's name",
              "party": "add one [[party]] table per party"}
    for key in required:
        if key not in table:
            raise where.error(key, "missing", tables.get(key, f"add `{key} = ...` to this table"))


def text_field(table: Mapping[str, Any], key: str, where: Where) -> str:
    """``table[key]``, which must be a string."""
    value = table[key]
    if not isinstance(value, str):
        raise where.error(key, f"expected a string, got {type(value).__name__} {show(value)}",
                          "write the value in quotes")
    return value


def integer(value: Any, key: str, where: Where) -> int:
    """``value``, which must be an ``int`` (a ``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(key, f"expected an integer, got {type(value).__name__} "
                               f"{show(value)}", "write a whole number without quotes")
    return value


def valid_name(value: Any, key: str, where: Where) -> str:
    """``value``, which must match ``[A-Za-z0-9_.-]{1,64}``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise where.error(key, f"{show(value)} is not a valid name",
                          "use 1 to 64 letters, digits, '_', '.' or '-'")
    return value


def timeout_seconds(value: Any, where: Where) -> float | None:
    """``None``, or a finite number of seconds in ``(0, MAX_TIMEOUT]`` as a float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.error("timeout", f"expected a number of seconds, got "
                                     f"{type(value).__name__} {show(value)}",
                          "write e.g. `timeout = 60.0`, or leave it out")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 < value <= MAX_TIMEOUT:
        raise where.error("timeout", f"{value!r} seconds is out of range",
                          f"use a number above 0 and at most {MAX_TIMEOUT:g}")
    return float(value)


def valid_host(host: Any, where: Where, key: str = "address", whole: str = "") -> str:
    """The host checked and normalised (IPv6 compressed, names in lower case)."""
    within = f" in {whole!r}" if whole else ""
    bad = where.error(key, f"host {show(host)}{within} is not an IP address or a host name",
                      "write e.g. '10.0.0.1:29500', 'party-a.example.org:29500' or "
                      "'[2001:db8::1]:29500'")
    if not isinstance(host, str) or not host or len(host) > 253:
        raise bad
    try:
        if ":" in host:
            return ipaddress.IPv6Address(host).compressed
        labels = host.split(".")
        if all(label.isascii() and label.isdigit() for label in labels):
            return str(ipaddress.IPv4Address(host))
    except ValueError as exc:
        raise bad from exc
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise bad
    return host.lower()


def valid_port(port: Any, where: Where, key: str = "address", whole: str = "") -> int:
    """``port``, which must be an ``int`` from 1 to 65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        within = f" in {whole!r}" if whole else ""
        raise where.error(key, f"port {show(port)}{within} is out of range",
                          "use a port from 1 to 65535")
    return port


def split_address(value: str, where: Where) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as a checked ``(host, port)``; IPv6 loses its brackets."""
    fix = "write HOST:PORT, e.g. '10.0.0.1:29500' (IPv6 in brackets: '[2001:db8::1]:29500')"
    if value.startswith("["):
        end = value.find("]")
        host, port_text = value[1:end], value[end + 2:]
        if end < 0 or value[end + 1:end + 2] != ":" or ":" not in host:
            raise where.error("address", f"{value!r} is not [IPv6]:PORT", fix)
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise where.error("address", f"{value!r} has no port", fix)
        if ":" in host:
            raise where.error("address", f"{value!r} looks like a bare IPv6 address",
                              "put IPv6 addresses in brackets: '[2001:db8::1]:29500'")
    if not _PORT.fullmatch(port_text):
        raise where.error("address", f"{value!r} has no numeric port", fix)
    return (valid_host(host, where, whole=value),
            valid_port(int(port_text), where, whole=value))


def normal_fingerprint(value: Any, where: Where) -> str:
    """``sha256:`` + 64 lowercase hex digits (any case, and ``ab:cd:..`` pairs, accepted)."""
    text = value.strip().lower() if isinstance(value, str) else ""
    prefix, colon, digits = text.partition(":")
    digits = digits.replace(":", "")
    if prefix != "sha256" or not colon or not _HEX64.fullmatch(digits):
        raise where.error("fingerprint", f"{show(value)} is not a SHA-256 fingerprint",
                          "write 'sha256:' followed by the 64 hex digits of the certificate's "
                          "SHA-256 fingerprint, as its owner's identity reports it")
    return FINGERPRINT_PREFIX + digits


# --- certificates ----------------------------------------------------------------------------


def read_certificate(value: str, base: Path, where: Where) -> tuple[bytes, str]:
    """The bytes a ``certificate`` value names and a label for messages."""
    if value.lstrip().startswith(PEM_BEGIN):
        if len(value) > MAX_CERTIFICATE_BYTES or not value.isascii():
            raise where.error("certificate", "the inline certificate is not a PEM certificate "
                              f"of at most {MAX_CERTIFICATE_BYTES} ASCII bytes",
                              "paste the certificate's PEM text exactly as its owner sent it")
        return value.encode("ascii"), "(inline PEM)"
    path = Path(value) if Path(value).is_absolute() else base / value
    try:
        info = path.stat()
        if not path.is_file():
            raise where.error("certificate", f"{value!r} ({path}) is not a file",
                              "give the path of the member's certificate (.crt) file")
        if info.st_size > MAX_CERTIFICATE_BYTES:
            raise where.error("certificate", f"{value!r} is {info.st_size} bytes, more than "
                              f"the {MAX_CERTIFICATE_BYTES} a certificate may have",
                              "check that the path names the certificate, not another file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_CERTIFICATE_BYTES + 1)
    except FileNotFoundError as exc:
        raise where.error("certificate", f"certificate file {value!r} was not found (looked at "
                          f"{path})", "put the member's certificate there, or fix the path "
                          "(relative paths start at the manifest's folder)") from exc
    except OSError as exc:
        raise where.error("certificate", f"could not read {value!r} ({exc.strerror or exc})",
                          "check the file's permissions") from exc
    if len(raw) > MAX_CERTIFICATE_BYTES:
        raise where.error("certificate", f"{value!r} grew past {MAX_CERTIFICATE_BYTES} bytes",
                          "check that the path names the certificate")
    return raw, value


def canonical_certificate(raw: bytes, label: str, member: str, where: Where) -> tuple[bytes, str]:
    """The one certificate in ``raw`` as canonical PEM, and its fingerprint."""
    if b"PRIVATE KEY" in raw:
        raise where.error("certificate", f"{label} holds a private key",
                          "list only certificates in a manifest; keep private keys to their "
                          "owner and make a new identity, since this key has been exposed")
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise where.error("certificate", f"{member}'s certificate {label} is not a PEM "
                          f"certificate ({exc})", "give the member's certificate file (it "
                          f"starts with {PEM_BEGIN})") from exc
    if len(certs) != 1:
        raise where.error("certificate", f"{member}'s certificate {label} holds {len(certs)} "
                          "certificates", "give exactly one certificate per member")
    der = certs[0].public_bytes(serialization.Encoding.DER)
    pem = certs[0].public_bytes(serialization.Encoding.PEM)
    return pem, FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def pinned_certificate(raw: bytes, label: str, member: str, claimed: Any,
                       where: Where) -> tuple[bytes, str]:
    """The canonical PEM and fingerprint, checked against the fingerprint the manifest gives."""
    written = normal_fingerprint(claimed, where)
    pem, actual = canonical_certificate(raw, label, member, where)
    if actual != written:
        raise where.error("fingerprint", f"{member}'s certificate {label} has fingerprint "
                          f"{actual} but the manifest says {written}",
                          "the file was swapped or the manifest is stale: check the "
                          "certificate with its owner, then fix the file or the fingerprint")
    return pem, actual
