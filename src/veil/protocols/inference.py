"""Messages between an encrypted-inference client and server (wire format, no pickle).

An inference message is a Veil envelope (:mod:`veil.he.serialize`) whose body is a small JSON
header plus a list of binary frames (each frame one serialized ``CKKSTensor`` envelope)::

    header_len  4 bytes big-endian   then header_len bytes of UTF-8 JSON (an object)
    count       4 bytes big-endian   then, count times: length (8 bytes) + that many bytes

:func:`unpack_frames` checks the envelope (size limit first), then every length against the
bytes actually present and the frame-count limit, before anything is parsed; the header is parsed
by the bounded :func:`veil.he.serialize.load_json` (size, depth and integer-length limits); every
failure is a :class:`~veil.errors.SerializationError`. Kinds used by ``veil.models``:

``models.encrypted``  an encrypted input or output (header: layout, n_samples, windows, sizes)
``models.plan``       the public plan of a served model (header only: JSON, no frames)

What a message reveals to whoever sees it: the header (layout, number of samples, tensor sizes,
the model's public plan) and ciphertexts, which reveal nothing about the values without the key.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from veil.errors import SerializationError
from veil.he import serialize as envelope

__all__ = ["pack_frames", "unpack_frames", "KIND_ENCRYPTED", "KIND_PLAN", "MAX_FRAMES"]

KIND_ENCRYPTED = "models.encrypted"
KIND_PLAN = "models.plan"
MAX_FRAMES = 1 << 16
MAX_HEADER = 1 << 20
MAX_HEADER_DEPTH = 32
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def pack_frames(kind: str, header: dict[str, Any], frames: list[bytes]) -> bytes:
    """Envelope of ``kind`` holding a JSON ``header`` and binary ``frames``."""
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(frames) > MAX_FRAMES:
        raise SerializationError(
            f"message too large: header {len(head)} bytes (max {MAX_HEADER}), {len(frames)} "
            f"frames (max {MAX_FRAMES}); send fewer tensors per message"
        )
    parts = [_U32.pack(len(head)), head, _U32.pack(len(frames))]
    for f in frames:
        parts += [_U64.pack(len(f)), bytes(f)]
    return envelope.pack(kind, b"".join(parts))


def unpack_frames(
    data: bytes, kind: str, *, max_bytes: int = envelope.DEFAULT_MAX_BYTES,
    max_frames: int = MAX_FRAMES,
) -> tuple[dict[str, Any], list[bytes]]:
    """Check and open a message from :func:`pack_frames`; returns ``(header, frames)``."""
    body = envelope.unpack(data, kind=kind, max_bytes=max_bytes).body
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(body):
            raise SerializationError(
                f"{kind} message truncated: {what} needs {n} bytes at offset {pos}, "
                f"{len(body) - pos} left"
            )
        chunk = body[pos : pos + n]
        pos += n
        return chunk

    (hlen,) = _U32.unpack(take(4, "header length"))
    if hlen > MAX_HEADER:
        raise SerializationError(f"{kind} header of {hlen} bytes exceeds {MAX_HEADER}")
    header = envelope.load_json(take(hlen, "header"), what=f"{kind} header",
                                max_bytes=MAX_HEADER, max_depth=MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise SerializationError(f"{kind} header must be a JSON object")
    (count,) = _U32.unpack(take(4, "frame count"))
    if count > max_frames:
        raise SerializationError(f"{kind} message has {count} frames, more than {max_frames}")
    frames = []
    for i in range(count):
        (n,) = _U64.unpack(take(8, f"length of frame {i}"))
        frames.append(take(n, f"frame {i}"))
    if pos != len(body):
        raise SerializationError(f"{kind} message has {len(body) - pos} trailing bytes")
    return header, frames
