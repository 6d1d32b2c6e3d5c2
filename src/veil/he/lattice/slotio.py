"""SEAL objects to and from bytes, for the slot-level CKKS layer (:mod:`veil.he.lattice.slots`).

TenSEAL ships SEAL's own Python binding (``tenseal.sealapi``), whose objects save to and load
from files only. This module moves them through a private temporary directory (mode 0700, on
``/dev/shm`` when it exists) and removes each file at once. Every blob another party wrote is
checked structurally (:func:`check_object`, the same walker as :mod:`~veil.he.lattice.sealcheck`)
before SEAL parses it, because SEAL 4.1 aborts the process on some malformed objects.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from typing import Any, Literal

from veil.errors import SerializationError
from veil.he.lattice.native import sealapi
from veil.he.lattice.sealcheck import HEADER_SIZE, MAGIC, Members, fail, header, inflate
from veil.he.lattice.sealcheck import ciphertext as ciphertext_layout
from veil.he.lattice.sealcheck import kswitch_keys as kswitch_layout
from veil.he.lattice.sealcheck import plaintext as plaintext_layout

__all__ = ["to_bytes", "from_bytes", "check_object", "Kind"]

Kind = Literal["ciphertext", "kswitch", "secret"]
_LAYOUTS = {"ciphertext": ciphertext_layout, "kswitch": kswitch_layout,
            "secret": plaintext_layout}
_DIR: str | None = None


def _private_dir() -> str:
    global _DIR
    if _DIR is None or not os.path.isdir(_DIR):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _DIR = tempfile.mkdtemp(prefix="veil-seal-", dir=base)  # mode 0700
    return _DIR


def _path() -> str:
    return os.path.join(_private_dir(), secrets.token_hex(12))


def to_bytes(obj: Any) -> bytes:
    """``obj.save`` (a SEAL object or a seeded ``Serializable``) as bytes."""
    path = _path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def check_object(blob: bytes, kind: Kind, what: str) -> None:
    """Raise SerializationError unless ``blob`` is one well-formed SEAL object of ``kind``.

    Seeded ciphertexts and keys (SEAL's compact form: the second polynomial replaced by the
    seed that regenerates it) are accepted; their sizes are checked the same way.
    """
    mv = memoryview(blob)
    if mv[:2] != MAGIC:
        raise fail(what, "not a SEAL object")
    compr, total = header(mv, 0, what, nested=False)
    if total != len(mv):
        raise fail(what, "SEAL header size does not match the object's length")
    _LAYOUTS[kind](Members(inflate(mv[HEADER_SIZE:], compr, what), what))


def from_bytes(obj: Any, context: Any, blob: bytes, kind: Kind, what: str) -> Any:
    """Load ``blob`` into the empty SEAL object ``obj`` under ``context`` after checking it."""
    check_object(blob, kind, what)
    path = _path()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        try:
            obj.load(context, path)
        except Exception as exc:  # SEAL raises ValueError / RuntimeError / logic_error
            raise SerializationError(f"{what}: SEAL could not load the object ({exc})") from exc
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return obj


def seal() -> Any:
    """``tenseal.sealapi`` (SEAL's binding inside TenSEAL)."""
    return sealapi()
