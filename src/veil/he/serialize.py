"""Safe binary envelopes for contexts, keys and ciphertexts.

Layout (all integers big-endian)::

    magic       4 bytes   b"VEIL"
    version     1 byte    FORMAT_VERSION
    kind_len    1 byte    1..64
    kind        kind_len  ASCII name, e.g. "ckks.vector"
    params      32 bytes  SHA-256 of the canonical parameter description (zeros: none)
    body_len    8 bytes   length of body
    body        body_len  the payload proper (never pickle)
    digest      32 bytes  SHA-256 over everything before it

:func:`unpack` checks, in order and before anything is parsed: the size limit, the magic, the
version, the kind, the declared length against the actual length, the digest and the parameter
hash. Any failure raises :class:`~veil.errors.SerializationError` naming what was wrong. The digest
detects corruption and truncation; it is not a MAC (authenticity is the transport's job).

:func:`load_json` is the one JSON parser for headers another party wrote (context, tensor and
inference headers): it checks the size before parsing, the nesting depth before the decoder
recurses, and refuses integers longer than :data:`MAX_JSON_INT_DIGITS` digits, non-finite numbers
and duplicate keys, all as :class:`~veil.errors.SerializationError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from veil.errors import SerializationError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "Envelope",
    "pack",
    "unpack",
    "params_digest",
    "NO_PARAMS",
    "load_json",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
]

MAGIC = b"VEIL"
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # 512 MiB: large Galois-key contexts fit, nothing wild does
NO_PARAMS = bytes(32)
_HEAD = struct.Struct(">4sBB")
_LEN = struct.Struct(">Q")
_DIGEST = 32
_MIN_SIZE = _HEAD.size + 1 + 32 + _LEN.size + _DIGEST
MAX_JSON_DEPTH = 16
MAX_JSON_INT_DIGITS = 40  # 2^128 has 39 digits; headers hold sizes, levels and bounds
# one left-to-right pass: whole strings (skipped), brackets (counted), or an unterminated quote
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|"', re.DOTALL)


@dataclass(frozen=True)
class Envelope:
    kind: str
    params_hash: bytes
    body: bytes


def params_digest(description: Any) -> bytes:
    """SHA-256 of a canonical JSON form of ``description`` (dicts, lists, numbers, strings)."""
    canon = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).digest()


def pack(kind: str, body: bytes, *, params_hash: bytes = NO_PARAMS) -> bytes:
    """Wrap ``body`` in a versioned envelope of the given ``kind``."""
    try:
        kind_b = kind.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise SerializationError(f"envelope kind must be an ASCII string, got {kind!r}") from exc
    if not 1 <= len(kind_b) <= 64:
        raise SerializationError(f"envelope kind must be 1..64 ASCII bytes, got {kind!r}")
    if len(params_hash) != 32:
        raise SerializationError(f"params_hash must be 32 bytes, got {len(params_hash)}")
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(kind_b)) + kind_b + params_hash
    head += _LEN.pack(len(body))
    digest = hashlib.sha256(head)
    digest.update(body)
    return b"".join((head, body, digest.digest()))


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    kind: str | Iterable[str],
    params_hash: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Envelope:
    """Check and open an envelope; ``kind`` is the expected kind (or kinds)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(
            f"expected bytes to deserialize, got {type(data).__name__}; pass the output of "
            "serialize()"
        )
    data = bytes(data)
    kinds = {kind} if isinstance(kind, str) else set(kind)
    size = len(data)
    if size > max_bytes:
        raise SerializationError(
            f"payload of {size} bytes exceeds the limit of {max_bytes} bytes; raise max_bytes "
            "if this size is expected"
        )
    if size < _MIN_SIZE:
        raise SerializationError(f"payload of {size} bytes is too short to be a Veil envelope")
    magic, version, kind_len = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise SerializationError(f"not a Veil payload: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise SerializationError(
            f"unsupported envelope version {version}; this Veil reads version {FORMAT_VERSION}"
        )
    pos = _HEAD.size
    if not 1 <= kind_len <= 64 or pos + kind_len + 32 + _LEN.size + _DIGEST > size:
        raise SerializationError(f"corrupt envelope header (kind length {kind_len})")
    try:
        got_kind = data[pos : pos + kind_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise SerializationError("corrupt envelope header (kind is not ASCII)") from exc
    if got_kind not in kinds:
        raise SerializationError(
            f"wrong payload kind {got_kind!r}; expected {' or '.join(sorted(kinds))}"
        )
    pos += kind_len
    got_params = data[pos : pos + 32]
    pos += 32
    (body_len,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    if body_len != size - pos - _DIGEST:
        raise SerializationError(
            f"payload length mismatch: header says {body_len} body bytes, "
            f"{size - pos - _DIGEST} present (truncated or padded)"
        )
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise SerializationError("payload digest mismatch: the bytes were corrupted in transit")
    if params_hash is not None and got_params != params_hash:
        raise SerializationError(
            f"{got_kind} payload was made for other parameters "
            f"({got_params.hex()[:16]}… vs expected {params_hash.hex()[:16]}…); "
            "load it with the context it was created under"
        )
    return Envelope(got_kind, got_params, data[pos : pos + body_len])


def load_json(data: bytes | bytearray | memoryview, *, what: str, max_bytes: int,
              max_depth: int = MAX_JSON_DEPTH,
              max_int_digits: int = MAX_JSON_INT_DIGITS) -> Any:
    """Parse JSON that another party wrote, within limits checked before they can bite.

    In order: ``len(data) <= max_bytes``; UTF-8; nesting depth at most ``max_depth`` (counted on
    the raw text, outside strings, before the decoder recurses); integers of at most
    ``max_int_digits`` digits (before ``int()`` converts them); no NaN/Infinity, no float that
    overflows, no duplicate keys. Every failure is a :class:`SerializationError` naming ``what``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"{what}: expected JSON bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise SerializationError(
            f"{what}: JSON of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    depth = 0
    for m in _JSON_TOKEN.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise SerializationError(
                    f"{what}: JSON nested deeper than {max_depth} levels; refusing to parse it")
        elif tok in (b"]", b"}"):
            depth -= 1
        elif tok == b'"':
            raise SerializationError(f"{what}: not valid JSON (unterminated string)")

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise SerializationError(
                f"{what}: JSON integer of {len(text)} characters is longer than "
                f"{max_int_digits} digits")
        return int(text)

    def finite_float(text: str) -> float:
        if len(text) > 4 * max_int_digits:
            raise SerializationError(f"{what}: JSON number of {len(text)} characters is too long")
        value = float(text)
        if not math.isfinite(value):
            raise SerializationError(f"{what}: JSON number {text[:40]!r} overflows a float")
        return value

    def no_constant(name: str) -> Any:
        raise SerializationError(f"{what}: JSON constant {name} is not allowed")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise SerializationError(f"{what}: JSON object has duplicate keys")
        return out

    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_int=bounded_int, parse_float=finite_float,
                          parse_constant=no_constant, object_pairs_hook=unique)
    except SerializationError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:
        raise SerializationError(f"{what}: not valid JSON ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})") from exc
