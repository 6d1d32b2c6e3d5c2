"""Secret keys at rest: the sealing rule shared by Paillier private keys and secret contexts.

A secret key's envelope (the factors p, q of a Paillier key; a CKKS/BFV context with its secret
key) is written in one of two ways:

* **sealed** (``secret=Secret.passphrase(...)`` or ``Secret.key_file(...)``): the envelope is
  encrypted with AES-256-GCM by :func:`veil.trust.seal.seal` for a purpose naming the kind of
  key (``"veil.paillier.private-key"``, ``"veil.ckks.secret-context"``,
  ``"veil.bfv.secret-context"``), so a sealed key opens only as the kind it was sealed as;
* **exposed** (``expose_secret=True``): the plain envelope, readable by whoever gets the bytes;
  for tests and in-memory hand-overs only, never for a file.

Asking for neither raises :class:`~veil.errors.ConfigurationError`. Loaders take sealed bytes
with ``secret=`` and still read plain envelopes; sealed bytes without a secret are refused with
a message saying what to pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from veil.errors import ConfigurationError, SerializationError
from veil.trust.seal import MAGIC, SCRYPT_LOG2_N, Secret, is_sealed, seal, unseal
from veil.trust.seal import read_limited as seal_read_limited

__all__ = ["seal_secret", "open_secret", "read_limited", "check_secret",
           "SEAL_OVERHEAD"]

# bytes a sealed blob adds to its content: magic, 4 parameter bytes, salt, nonce, GCM tag
SEAL_OVERHEAD = len(MAGIC) + 4 + 16 + 12 + 16

_HOW = ("pass secret=Secret.passphrase(...) or secret=Secret.key_file(...) (from "
        "veil.trust.seal) to seal it, or expose_secret=True for the plaintext bytes (tests and "
        "in-memory use only)")


def seal_secret(envelope: Callable[[], bytes], *, what: str, purpose: str,
                secret: Secret | None, expose_secret: bool,
                scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """``envelope()`` sealed under ``secret`` for ``purpose``, or as it is with
    ``expose_secret=True``; ``what`` names the key in messages ("Paillier private key").
    ``envelope`` is called only once the arguments are known to be right."""
    if secret is not None:
        if expose_secret:
            raise ConfigurationError(
                f"pass either secret= (a sealed {what}) or expose_secret=True (the plaintext "
                "bytes), not both")
        if not isinstance(secret, Secret):
            raise ConfigurationError(
                f"secret must be a veil.trust.seal.Secret, got {type(secret).__name__}; build one "
                "with Secret.passphrase(...) or Secret.key_file(...)")
        if isinstance(scrypt_log2_n, bool) or not isinstance(scrypt_log2_n, int):
            raise ConfigurationError(f"scrypt_log2_n must be an int, got {scrypt_log2_n!r}")
        return seal(envelope(), secret, purpose=purpose, scrypt_log2_n=scrypt_log2_n)
    if expose_secret is not True:
        raise ConfigurationError(
            f"refusing to serialize a {what} in the clear: the bytes reveal it to whoever reads "
            f"them; {_HOW}")
    return envelope()


def open_secret(data: bytes, *, what: str, purpose: str, secret: Secret | None,
                max_bytes: int) -> bytes:
    """The plain envelope in ``data``: unsealed with ``secret`` when ``data`` is sealed, else
    ``data`` itself. Sealed data without a secret raises
    :class:`~veil.errors.ConfigurationError`; a wrong secret :class:`~veil.errors.UnsealError`."""
    if not is_sealed(data):
        return data
    if secret is None:
        raise ConfigurationError(
            f"this {what} is sealed (encrypted at rest); pass the secret it was sealed with: "
            "secret=Secret.passphrase(...) or secret=Secret.key_file(...) (veil.trust.seal)")
    if len(data) > max_bytes + SEAL_OVERHEAD:
        raise SerializationError(
            f"the sealed {what} is {len(data)} bytes, more than max_bytes={max_bytes} allows; "
            "pass a larger max_bytes if it is expected to be that big")
    return unseal(data, secret, purpose=purpose, max_bytes=max_bytes + SEAL_OVERHEAD)


def read_limited(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of file ``path`` (a ``what``), its size checked against ``max_bytes`` first."""
    return seal_read_limited(path, what, max_bytes, fix="check the path (the file save() wrote)")


def check_secret(secret: object, action: str) -> Secret:
    """``secret`` if it is a :class:`~veil.trust.seal.Secret`, else ConfigurationError."""
    if not isinstance(secret, Secret):
        raise ConfigurationError(
            f"{action} needs a secret to seal the key under (Secret.passphrase(...) or "
            f"Secret.key_file(...) from veil.trust.seal), got {type(secret).__name__}")
    return secret

