"""Signed result records: a released result, who computed it, over which session, and when.

A record is a JSON object::

    {"version": 1, "statistic": "mean", "result": {...}, "computed_by": "alice",
     "fingerprint": "sha256:...", "parties": ["alice", "bob"], "manifest": "sha256:..." | null,
     "time": "2025-01-31T12:00:00Z", "signature": "<base64>"}

``signature`` is ECDSA P-256 with SHA-256, by the private key of the identity that computed the
result (:class:`veil.trust.identity.Identity`), over the **canonical JSON** of every other
field: ``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)`` encoded as UTF-8. The signature is DER-encoded, then base64 (standard
alphabet, padded). Anyone holding the signer's certificate checks a record with
:func:`verify_record` (or ``openssl dgst -sha256 -verify``), so a result can be passed on and
its origin and integrity checked later.

What a record proves: the holder of the certificate's key signed exactly these fields. It does
not prove the computation was correct or that the named parties took part (they did not sign);
``manifest`` names the session manifest (:meth:`veil.trust.manifest.Manifest.digest`) the
parties agreed on, when there was one.

Results must be plain JSON: numbers (finite only), strings, booleans, ``None``, lists and
string-keyed mappings; numpy scalars and arrays become numbers and lists, tuples become lists
and dataclasses (such as a fitted regression) become objects of their fields.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import AuthenticationError, ConfigurationError, SerializationError
from veil.trust.seal import read_limited

if TYPE_CHECKING:
    from veil.trust.identity import Identity

__all__ = ["sign_record", "verify_record", "write_record", "read_record", "canonical",
           "RECORD_VERSION", "MAX_RECORD_BYTES"]

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20
_FIELDS = ("version", "statistic", "result", "computed_by", "fingerprint", "parties",
           "manifest", "time", "signature")
_MAX_DEPTH = 32
_MAX_SIGNATURE = 200  # base64 of a DER P-256 signature is at most 96 characters


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a record's signature covers: canonical JSON of ``fields``."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("utf-8")


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON data; ConfigurationError naming ``where`` when it cannot be."""
    if depth > _MAX_DEPTH:
        raise ConfigurationError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, str):
        return str(value)
    if type(value).__module__.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return _plain(value.tolist(), where, depth)  # numpy scalars and arrays
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigurationError(
                f"{where} is {number}; a signed record holds finite numbers only (release the "
                "result without NaN or infinity, or replace them before signing)")
        return number
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(
                    f"{where} has the key {key!r} of type {type(key).__name__}; a record's "
                    "mappings need string keys")
            out[key] = _plain(item, f"{where}[{key!r}]", depth + 1)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                      where, depth)
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ConfigurationError(
        f"{where} is a {type(value).__name__}, which a signed record cannot hold; give "
        "numbers, strings, booleans, None, lists, mappings or numpy arrays")


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigurationError(f"{name} must be a non-empty printable string, got {value!r}")
    return value


def _utc(when: datetime.datetime | None) -> str:
    if when is None:
        when = datetime.datetime.now(datetime.UTC)
    if not isinstance(when, datetime.datetime) or when.utcoffset() is None:
        raise ConfigurationError(
            f"when must be a timezone-aware datetime (e.g. datetime.now(datetime.UTC)), got "
            f"{when!r}")
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_record(result: Mapping[str, Any], *, identity: Identity, manifest_digest: str | None,
                statistic: str, parties: Sequence[str],
                when: datetime.datetime | None = None) -> dict[str, Any]:
    """A record of ``result`` signed by ``identity`` (a :class:`veil.trust.identity.Identity`).

    ``statistic`` names what was computed, ``parties`` who took part (their identity names),
    ``manifest_digest`` the session manifest's digest (``None`` without one), ``when`` the time
    of the release (a timezone-aware datetime; default now), stored in UTC to the second.
    Raises :class:`~veil.errors.ConfigurationError` for a result that is not plain JSON (NaN,
    infinity, objects) or bad fields.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(result, Mapping):
        raise ConfigurationError(f"result must be a mapping (e.g. {{'mean': 41.2}}), got "
                                 f"{type(result).__name__}")
    key = getattr(identity, "private_key", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(
            f"identity must be a veil.trust.identity.Identity with its private key, got "
            f"{type(identity).__name__}; load one with Identity.load(key_path, secret)")
    if isinstance(parties, str | bytes) or not isinstance(parties, Sequence):
        raise ConfigurationError(f"parties must be a list of party names, got {parties!r}")
    fields: dict[str, Any] = {
        "version": RECORD_VERSION,
        "statistic": _check_text("statistic", statistic),
        "result": _plain(result, "result"),
        "computed_by": _check_text("identity.name", identity.name),
        "fingerprint": _check_text("identity.fingerprint", identity.fingerprint),
        "parties": [_check_text(f"parties[{i}]", p) for i, p in enumerate(parties)],
        "manifest": None if manifest_digest is None else _check_text("manifest_digest",
                                                                      manifest_digest),
        "time": _utc(when),
    }
    data = canonical(fields)
    if len(data) > MAX_RECORD_BYTES - 1024:
        raise ConfigurationError(
            f"the record would be {len(data)} bytes, more than {MAX_RECORD_BYTES - 1024}; "
            "sign a smaller result (or a digest of it)")
    signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return {**fields, "signature": base64.b64encode(signature).decode("ascii")}


def _check_shape(record: Any) -> dict[str, Any]:
    """``record`` as a dict with exactly the version-1 fields of the right types."""
    if not isinstance(record, Mapping):
        raise SerializationError(f"a record must be a JSON object, got {type(record).__name__}")
    got = set(record)
    if got != set(_FIELDS):
        missing, extra = sorted(set(_FIELDS) - got), sorted(map(str, got - set(_FIELDS)))
        raise SerializationError(
            f"not a version-{RECORD_VERSION} result record: "
            + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                          f"unknown fields {extra[:8]}" if extra else "") if part))
    if record["version"] != RECORD_VERSION or type(record["version"]) is not int:
        raise SerializationError(
            f"record version {record['version']!r} is not supported (this Veil reads version "
            f"{RECORD_VERSION})")
    for name in ("statistic", "computed_by", "fingerprint", "time", "signature"):
        if not isinstance(record[name], str) or not record[name]:
            raise SerializationError(f"record field {name!r} must be a non-empty string")
    if not isinstance(record["result"], Mapping):
        raise SerializationError("record field 'result' must be an object")
    if not isinstance(record["parties"], list) or not all(
            isinstance(p, str) for p in record["parties"]):
        raise SerializationError("record field 'parties' must be a list of names")
    if record["manifest"] is not None and not isinstance(record["manifest"], str):
        raise SerializationError("record field 'manifest' must be a string or null")
    return dict(record)


def _signature(record: Mapping[str, Any]) -> bytes:
    text = record["signature"]
    if len(text) > _MAX_SIGNATURE:
        raise SerializationError(f"record signature is {len(text)} characters; a P-256 "
                                 "signature in base64 has at most 96")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SerializationError("record signature is not base64") from exc


def _certificate(certificate_pem: bytes) -> tuple[Any, str]:
    """The certificate object and its fingerprint (SerializationError when not a certificate)."""
    from cryptography import x509

    from veil.trust.identity import fingerprint_of

    fingerprint = fingerprint_of(certificate_pem)  # SerializationError for anything else
    return x509.load_pem_x509_certificate(bytes(certificate_pem)), fingerprint


def verify_record(record: Mapping[str, Any], certificate_pem: bytes) -> dict[str, Any]:
    """The result of ``record`` after checking it was signed by ``certificate_pem``'s key.

    Raises :class:`~veil.errors.AuthenticationError` when the record names another signer
    (fingerprint or name), its time is outside the certificate's validity, or the signature does
    not verify (a field was altered after signing); :class:`~veil.errors.SerializationError`
    when the record or the certificate is malformed.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    rec = _check_shape(record)
    signature = _signature(rec)
    cert, fingerprint = _certificate(certificate_pem)
    if rec["fingerprint"] != fingerprint:
        raise AuthenticationError(
            f"the record was signed by {rec['computed_by']!r} with certificate "
            f"{rec['fingerprint'][:23]}…, not by the certificate given ({fingerprint[:23]}…); "
            "verify it with the signer's certificate")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != rec["computed_by"]:
        raise AuthenticationError(
            f"the record says it was computed by {rec['computed_by']!r} but the certificate "
            f"it names is {names[0].value if names else None!r}'s: the computed_by or "
            "fingerprint field was altered")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or \
            not isinstance(public.curve, ec.SECP256R1):
        raise SerializationError("the certificate's key is not P-256; give a Veil identity's "
                                 "certificate")
    fields = {k: v for k, v in rec.items() if k != "signature"}
    try:
        public.verify(signature, canonical(fields), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AuthenticationError(
            f"the signature of this {rec['statistic']!r} record does not verify under "
            f"{fingerprint[:23]}…: one of its fields (result, statistic, parties, manifest, "
            "time, ...) was altered after signing; do not trust this result") from None
    except (TypeError, ValueError) as exc:  # an in-memory record holding non-JSON values
        raise SerializationError(f"the record cannot be checked: {exc}") from exc
    _check_time(rec["time"], cert)
    return fields["result"]


def _check_time(text: str, cert: Any) -> None:
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
    except ValueError as exc:
        raise SerializationError(f"record time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ") \
            from exc
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise AuthenticationError(
            f"the record's time {text} is outside its certificate's validity "
            f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}); "
            "the signing key was not valid then")


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` (from :func:`sign_record`) to ``path`` as JSON, atomically (0644)."""
    from veil.trust.seal import atomic_write

    rec = _check_shape(record)
    try:
        text = json.dumps(rec, sort_keys=True, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"the record is not plain JSON ({exc})") from exc
    data = text.encode("utf-8")
    if len(data) > MAX_RECORD_BYTES:
        raise SerializationError(f"the record is {len(data)} bytes, more than "
                                 f"{MAX_RECORD_BYTES}")
    return atomic_write(path, data, mode=0o644)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a record")


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record in file ``path`` (at most 1 MiB), checked for shape, not yet verified: call
    :func:`verify_record` with the signer's certificate before trusting it."""
    p = Path(path)
    raw = read_limited(p, "record", MAX_RECORD_BYTES,
                       fix="check the path (a record written by write_record)")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise SerializationError(f"{p}: not a JSON record ({type(exc).__name__})") from exc
    try:
        return _check_shape(doc)
    except SerializationError as exc:
        raise SerializationError(f"{p}: {exc}") from exc
