"""Base oblivious transfer: 1-out-of-2 random OT from X25519, semi-honest, no third party.

The flow (one sender scalar, one receiver scalar per instance; ``G`` is the X25519 base point,
``u(P)`` the Montgomery u-coordinate that X25519 exposes, ``H`` SHA-256 truncated to 128 bits):

1. sender: ``a`` uniform in Z_l^*; sends a fresh 128-bit session id ``sid`` and ``A = u(a G)``.
2. receiver, for each instance ``i`` with choice ``c_i``: ``r_i`` uniform in Z_l^*; sends
   ``B_i = u(r_i G)`` when ``c_i = 0`` and ``B_i = u(r_i A)`` when ``c_i = 1``; its key is
   ``H(sid, i, c_i, A, B_i, u(r_i A))`` for ``c_i = 0`` and ``H(sid, i, c_i, A, B_i, u(r_i G))``
   for ``c_i = 1``.
3. sender: ``k_i0 = H(sid, i, 0, A, B_i, u(a B_i))`` and ``k_i1 = H(sid, i, 1, A, B_i,
   u(a^-1 B_i))``.

Correctness: for ``c = 0`` both sides hash ``u(a r G)``; for ``c = 1`` both hash
``u(a^-1 r a G) = u(r G)``. Only scalar multiplication is needed, which is all X25519 offers
(no point addition), so the Chou-Orlandi "simplest OT" is replaced by this inverse-exponent
variant with the same message pattern.

Security (semi-honest, random-oracle model for ``H``):

* The receiver's choices are hidden statistically. ``r_i`` is uniform in Z_l^*, so ``r_i G`` and
  ``r_i A = (r_i a) G`` are both uniform non-identity points of the prime-order subgroup: ``B_i``
  has the same distribution whatever ``c_i`` is, even to a sender with unbounded computing power.
  X25519 clamps scalars (multiple of 8 in [2^254, 2^255)); because ``u(P) = u(-P)``, a scalar is
  fed to X25519 as the clamped representative of ``+-r`` (:func:`clamped_scalar`), which exists
  for all but a 2^-126 fraction of ``r`` (those are redrawn), so the uniformity survives clamping.
* The sender's other key stays hidden under the computational Diffie-Hellman assumption on
  Curve25519. For ``c = 0`` the receiver would need ``u(a^-1 r G)``, i.e. ``a^-1 G`` from
  ``(G, a G)`` (inverse-CDH); for ``c = 1`` it would need ``u(a^2 r G)``, i.e. ``a^2 G`` from
  ``(G, a G)`` (square-CDH). Both are equivalent to CDH in a prime-order group. Every value the
  receiver holds is a known multiple of ``G`` or ``a G``, so many instances do not help either.
* The keys are ``H`` of the shared point together with the session id, instance index, bit and
  the transcript ``(A, B_i)``: in the random-oracle model a key whose point the receiver cannot
  compute is uniform and independent of everything it sees; the index and bit separate the
  domains of the ``2 n`` keys (no two are the same hash query even if points repeated), the
  session id separates runs that reuse messages, and binding ``A, B_i`` ties a key to the
  transcript it came from.

All randomness comes from :mod:`secrets`. Received points are checked before use: exact
lengths, canonical encoding (``u < 2^255 - 19``) and a non-zero shared point (X25519 returns
all zeros for low-order inputs); violations raise :class:`~veil.errors.SerializationError`.
Messages are plain bytes; moving them between the parties is the caller's job.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from veil.errors import ConfigurationError, SerializationError

__all__ = [
    "KEY_BYTES",
    "MAX_INSTANCES",
    "OTSenderState",
    "OTReceiverState",
    "clamped_scalar",
    "sender_first",
    "receiver_respond",
    "sender_keys",
    "receiver_keys",
    "local_ot",
]

KEY_BYTES = 16
POINT_BYTES = 32
SESSION_BYTES = 16
MAX_INSTANCES = 4096
FIELD_P = 2**255 - 19
GROUP_L = 2**252 + 27742317777372353535851937790883648493
_INV8 = pow(8, -1, GROUP_L)
_MAGIC_FIRST = b"VOT1a"
_MAGIC_REPLY = b"VOT1b"
_DOMAIN = b"veil/protocols/triples/ot/v1"


@dataclass(frozen=True)
class OTSenderState:
    """What the sender keeps between :func:`sender_first` and :func:`sender_keys`."""

    session: bytes
    point: bytes
    scalar: bytes = field(repr=False)
    inverse: bytes = field(repr=False)


@dataclass(frozen=True)
class OTReceiverState:
    """What the receiver keeps: its choices and one key per instance (``keys[i]`` = k_{i,c_i})."""

    choices: tuple[int, ...] = field(repr=False)
    keys: tuple[bytes, ...] = field(repr=False)


def clamped_scalar(r: int) -> bytes | None:
    """The X25519 scalar encoding of ``+-r mod l``, or ``None`` (probability ~2^-126).

    The encoding is a multiple of 8 in [2^254, 2^255), so X25519's clamping leaves it unchanged,
    and it is congruent to ``r`` or ``-r`` modulo the group order ``l``.
    """
    k = r % GROUP_L * _INV8 % GROUP_L
    for cand in (k, GROUP_L - k):
        if 2**251 <= cand < 2**252:
            return (8 * cand).to_bytes(32, "little")
    return None


def _draw_scalar() -> tuple[int, bytes]:
    while True:
        r = 1 + secrets.randbelow(GROUP_L - 1)
        enc = clamped_scalar(r)
        if enc is not None:
            return r, enc


def _check_point(raw: bytes, what: str) -> bytes:
    if len(raw) != POINT_BYTES:
        raise SerializationError(f"{what} must be {POINT_BYTES} bytes, got {len(raw)}")
    if int.from_bytes(raw, "little") >= FIELD_P:
        raise SerializationError(
            f"{what} is not a canonical X25519 u-coordinate (>= 2^255 - 19); the peer must send "
            "points produced by X25519 (check for corruption in transit)")
    return bytes(raw)


def _mul(scalar: bytes, point: bytes | None, what: str) -> bytes:
    priv = X25519PrivateKey.from_private_bytes(scalar)
    if point is None:
        return priv.public_key().public_bytes_raw()
    try:
        return priv.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError as exc:
        raise SerializationError(
            f"{what} is a low-order curve point (the shared point is all zeros); the message "
            "was corrupted or forged, restart the OT with fresh messages") from exc


def _key(session: bytes, index: int, bit: int, a_pt: bytes, b_pt: bytes, shared: bytes) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    h.update(session + struct.pack("<IB", index, bit) + a_pt + b_pt + shared)
    return h.digest()[:KEY_BYTES]


def sender_first() -> tuple[OTSenderState, bytes]:
    """Start an OT batch as the sender: returns the secret state and the message to send."""
    while True:
        a, a_enc = _draw_scalar()
        inv_enc = clamped_scalar(pow(a, -1, GROUP_L))
        if inv_enc is not None:
            break
    session = secrets.token_bytes(SESSION_BYTES)
    point = _mul(a_enc, None, "base point")
    state = OTSenderState(session=session, point=point, scalar=a_enc, inverse=inv_enc)
    return state, _MAGIC_FIRST + session + point


def _parse_first(msg: bytes) -> tuple[bytes, bytes]:
    size = len(_MAGIC_FIRST) + SESSION_BYTES + POINT_BYTES
    if not isinstance(msg, (bytes, bytearray)) or len(msg) != size:
        got = len(msg) if isinstance(msg, (bytes, bytearray)) else type(msg).__name__
        raise SerializationError(
            f"OT sender message must be {size} bytes, got {got}; pass the bytes returned by "
            "sender_first() unchanged")
    if msg[: len(_MAGIC_FIRST)] != _MAGIC_FIRST:
        raise SerializationError("not an OT sender message (bad header); pass the bytes "
                                 "returned by sender_first()")
    session = bytes(msg[len(_MAGIC_FIRST): len(_MAGIC_FIRST) + SESSION_BYTES])
    return session, _check_point(msg[-POINT_BYTES:], "the OT sender's point")


def _check_choices(choices: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(int(c) for c in choices)
    if not 1 <= len(bits) <= MAX_INSTANCES:
        raise ConfigurationError(
            f"an OT batch needs between 1 and {MAX_INSTANCES} choices, got {len(bits)}; split "
            "larger batches or use OT extension (veil.protocols.triples.iknp)")
    if any(b not in (0, 1) for b in bits):
        raise ConfigurationError("OT choices must be bits (0 or 1)")
    return bits


def receiver_respond(msg: bytes, choices: Sequence[int]) -> tuple[OTReceiverState, bytes]:
    """Answer the sender's message with one choice bit per instance.

    Returns the receiver's state (with its keys) and the reply to send back to the sender.
    """
    bits = _check_choices(choices)
    session, a_pt = _parse_first(msg)
    points, keys = [], []
    for i, c in enumerate(bits):
        _, r_enc = _draw_scalar()
        shared_a = _mul(r_enc, a_pt, "the OT sender's point")
        b_pt = shared_a if c else _mul(r_enc, None, "base point")
        shared = _mul(r_enc, None, "base point") if c else shared_a
        points.append(b_pt)
        keys.append(_key(session, i, c, a_pt, b_pt, shared))
    reply = _MAGIC_REPLY + struct.pack("<I", len(bits)) + b"".join(points)
    return OTReceiverState(choices=bits, keys=tuple(keys)), reply


def _parse_reply(msg: bytes) -> list[bytes]:
    head = len(_MAGIC_REPLY) + 4
    if not isinstance(msg, (bytes, bytearray)) or len(msg) < head:
        raise SerializationError(
            f"OT receiver message is shorter than its {head}-byte header; pass the bytes "
            "returned by receiver_respond() unchanged")
    if msg[: len(_MAGIC_REPLY)] != _MAGIC_REPLY:
        raise SerializationError("not an OT receiver message (bad header); pass the bytes "
                                 "returned by receiver_respond()")
    (count,) = struct.unpack_from("<I", msg, len(_MAGIC_REPLY))
    if not 1 <= count <= MAX_INSTANCES:
        raise SerializationError(
            f"OT receiver message announces {count} instances; expected 1..{MAX_INSTANCES}")
    if len(msg) != head + count * POINT_BYTES:
        raise SerializationError(
            f"OT receiver message for {count} instances must be {head + count * POINT_BYTES} "
            f"bytes, got {len(msg)} (truncated or padded in transit)")
    return [_check_point(msg[head + i * POINT_BYTES: head + (i + 1) * POINT_BYTES],
                         f"the OT receiver's point {i}") for i in range(count)]


def sender_keys(state: OTSenderState, msg: bytes) -> list[tuple[bytes, bytes]]:
    """The sender's key pairs ``(k_i0, k_i1)``, one per instance of the receiver's reply."""
    out = []
    for i, b_pt in enumerate(_parse_reply(msg)):
        what = f"the OT receiver's point {i}"
        k0 = _key(state.session, i, 0, state.point, b_pt, _mul(state.scalar, b_pt, what))
        k1 = _key(state.session, i, 1, state.point, b_pt, _mul(state.inverse, b_pt, what))
        out.append((k0, k1))
    return out


def receiver_keys(state: OTReceiverState) -> list[bytes]:
    """The receiver's keys ``k_{i, c_i}``, one per instance."""
    return list(state.keys)


def local_ot(choices: Sequence[int]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """Run both roles in this process (tests, benchmarks): ``(sender pairs, receiver keys)``."""
    s_state, first = sender_first()
    r_state, reply = receiver_respond(first, choices)
    return sender_keys(s_state, reply), receiver_keys(r_state)
