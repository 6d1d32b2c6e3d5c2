"""IKNP OT extension (Ishai-Kilian-Nissim-Petrank 2003), semi-honest: many random OTs from 128.

Roles of the base OT are reversed: the extension *receiver* (choices ``r`` in {0,1}^m) is the
base-OT sender and gets key pairs ``(k_j0, k_j1)``, j < 128; the extension *sender* is the
base-OT receiver with a secret random ``s`` in {0,1}^128 and gets ``k_j,s_j``. Then

* receiver: ``t_j = G(k_j0)``, ``u_j = t_j ^ G(k_j1) ^ r`` (rows of m bits), sends ``u``;
* sender: ``q_j = G(k_j,s_j) ^ s_j u_j = t_j ^ s_j r``; the i-th column ``q^i`` of the
  128 x m matrix is ``t^i ^ r_i s``;
* outputs (random OT): sender ``m0_i = H(i, q^i)``, ``m1_i = H(i, q^i ^ s)``; receiver
  ``m_{r_i} = H(i, t^i)``.

Why it is private. The sender sees ``u_j = G(k_j0) ^ G(k_j1) ^ r`` where it does not know
``k_j,1-s_j``: that PRG stream masks ``r`` completely, so ``u`` is pseudorandom whatever the
choices are. The receiver knows ``t^i`` but not ``s``, so ``m_{1-r_i} = H(i, t^i ^ s)`` is
pseudorandom to it when ``H`` is (tweakable) correlation robust. The base OT is
:mod:`veil.protocols.triples.ot`.

Primitives. ``G`` is AES-128 in counter mode keyed by the 128-bit base-OT key (each key drives
exactly one stream, so a zero IV is safe). ``H`` is the fixed-key AES construction TMMO of
Guo-Katz-Wang-Yu (S&P 2020): ``H(i, x) = pi(pi(x) ^ tweak_i) ^ pi(x)`` with ``pi`` AES-128
under a public fixed key and ``tweak_i`` = 64-bit index ``i`` || 64-bit session tag (a hash
of the base-OT transcript), which is tweakable circular correlation robust for an ideal
permutation; it is chosen over SHA-256 because it runs vectorised (one AES-ECB call per chunk
of rows) instead of one hash call per OT. The bit-matrix transpose works on 8 x 8 blocks held
in uint64 words (three mask-and-shift rounds), in chunks of 2^16 OTs.

Messages: (1) receiver -> sender: header, ``m`` and the base-OT sender message; (2) sender ->
receiver: the base-OT receiver reply; (3) receiver -> sender: header, ``m`` and ``u``
(16 bytes per OT). Every received message is length-checked before it is parsed and malformed
ones raise :class:`~veil.errors.SerializationError`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import ot

__all__ = [
    "KAPPA",
    "MAX_OTS",
    "ROTSenderOutput",
    "ROTReceiverOutput",
    "KeyStreams",
    "transpose_bits",
    "tccr_hash",
    "random_bits",
    "receiver_start",
    "sender_respond",
    "receiver_extend",
    "sender_finish",
    "sender_view",
    "local_random_ots",
]

KAPPA = 128
MAX_OTS = 1 << 27
CHUNK_BYTES = 1 << 13  # bytes per matrix row per chunk = 2^16 OTs (1 MiB matrix)
_MAGIC_START = b"VIK1s"
_MAGIC_U = b"VIK1u"
_FIXED_KEY = hashlib.sha256(b"veil/protocols/triples/iknp/fixed-key-aes/v1").digest()[:16]
_M1 = np.uint64(0x00AA00AA00AA00AA)
_M2 = np.uint64(0x0000CCCC0000CCCC)
_M3 = np.uint64(0x00000000F0F0F0F0)


@dataclass(frozen=True)
class ROTSenderOutput:
    """The extension sender's ``m`` random message pairs: two (m, 2) uint64 arrays (128 bits)."""

    m0: np.ndarray = field(repr=False)
    m1: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ROTReceiverOutput:
    """The extension receiver's choice bits (uint8 0/1, shape (m,)) and ``m_{choice}`` (m, 2)."""

    choices: np.ndarray = field(repr=False)
    messages: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ExtReceiverState:
    """Receiver state between :func:`receiver_start` and :func:`receiver_extend`."""

    m: int
    base: ot.OTSenderState = field(repr=False)
    first: bytes = field(repr=False)
    choices: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ExtSenderState:
    """Sender state between :func:`sender_respond` and :func:`sender_finish`."""

    m: int
    s_bits: np.ndarray = field(repr=False)
    keys: tuple[bytes, ...] = field(repr=False)
    tag: int = field(repr=False)


class KeyStreams:
    """The PRG ``G``: one AES-128-CTR keystream per 128-bit key, read chunk by chunk."""

    def __init__(self, keys: list[bytes] | tuple[bytes, ...]) -> None:
        self._enc = [Cipher(algorithms.AES(k), modes.CTR(bytes(16))).encryptor() for k in keys]

    def take(self, nbytes: int) -> np.ndarray:
        """The next ``nbytes`` of every stream, as a (len(keys), nbytes) uint8 matrix."""
        zeros = bytes(nbytes)
        out = np.empty((len(self._enc), nbytes), dtype=np.uint8)
        for j, enc in enumerate(self._enc):
            out[j] = np.frombuffer(enc.update(zeros), dtype=np.uint8)
        return out


def random_bits(n: int) -> np.ndarray:
    """``n`` uniform bits (uint8 0/1) from ``os.urandom``."""
    return np.unpackbits(np.frombuffer(os.urandom((n + 7) // 8), dtype=np.uint8),
                         bitorder="little")[:n]


def _transpose8(x: np.ndarray) -> np.ndarray:
    """Transpose the 8 x 8 bit matrix in each uint64 (bit 8 r + c <-> bit 8 c + r), in place."""
    for shift, mask in ((7, _M1), (14, _M2), (28, _M3)):
        t = x >> np.uint64(shift)
        t ^= x
        t &= mask
        x ^= t
        t <<= np.uint64(shift)
        x ^= t
    return x


def transpose_bits(mat: np.ndarray) -> np.ndarray:
    """Transpose a (k, nb) uint8 bit matrix (k % 8 == 0, little bit order) to (8 nb, k / 8).

    Row ``j`` bit ``i`` of the input (byte ``i // 8``, bit ``i % 8``) becomes row ``i`` bit
    ``j`` of the output, i.e. ``unpackbits(out, bitorder="little")`` is ``unpackbits(mat).T``.
    """
    k, nb = mat.shape
    blocks = mat.reshape(k // 8, 8, nb).transpose(2, 0, 1).copy()  # a copy: edited in place
    words = _transpose8(blocks.view("<u8").reshape(nb, k // 8))
    out = words.view(np.uint8).reshape(nb, k // 8, 8).transpose(0, 2, 1)
    return np.ascontiguousarray(out).reshape(nb * 8, k // 8)


def _aes_ecb(blocks: np.ndarray) -> np.ndarray:
    enc = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    return np.frombuffer(enc.update(blocks.tobytes()), dtype="<u8").reshape(-1, 2)


def tccr_hash(rows: np.ndarray, start: int, tag: int) -> np.ndarray:
    """TMMO hash of (n, 2) uint64 rows for indices ``start .. start + n - 1`` under ``tag``."""
    n = rows.shape[0]
    tweak = np.empty((n, 2), dtype="<u8")
    tweak[:, 0] = np.arange(start, start + n, dtype=np.uint64)
    tweak[:, 1] = np.uint64(tag)
    p = _aes_ecb(rows)
    return _aes_ecb(p ^ tweak) ^ p


def _check_m(m: int) -> int:
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_OTS:
        raise ConfigurationError(f"the number of OTs must be an integer in [1, {MAX_OTS}], "
                                 f"got {m!r}; split larger batches")
    return m


def _padded_bytes(m: int) -> int:
    return -(-m // 64) * 8  # row length in bytes, a multiple of 8


def _session_tag(first: bytes, reply: bytes) -> int:
    return int.from_bytes(hashlib.sha256(first + reply).digest()[:8], "little")


def receiver_start(m: int, choices: np.ndarray | None = None) -> tuple[ExtReceiverState, bytes]:
    """Start ``m`` OTs as the extension receiver (random choices when ``choices`` is None)."""
    _check_m(m)
    if choices is None:
        bits = random_bits(m)
    else:
        bits = np.asarray(choices)
        if bits.shape != (m,) or not np.isin(bits, (0, 1)).all():
            raise ConfigurationError(f"choices must be {m} bits (0 or 1), got shape {bits.shape}")
        bits = bits.astype(np.uint8)
    base, first = ot.sender_first()
    state = ExtReceiverState(m=m, base=base, first=first, choices=bits)
    return state, _MAGIC_START + struct.pack("<Q", m) + first


def sender_respond(msg: bytes, m: int) -> tuple[ExtSenderState, bytes]:
    """Answer the receiver's first message as the extension sender of ``m`` OTs."""
    _check_m(m)
    head = len(_MAGIC_START) + 8
    if not isinstance(msg, (bytes, bytearray)) or len(msg) < head:
        raise SerializationError(f"IKNP start message is shorter than its {head}-byte header; "
                                 "pass the bytes returned by receiver_start() unchanged")
    if msg[: len(_MAGIC_START)] != _MAGIC_START:
        raise SerializationError("not an IKNP start message (bad header); pass the bytes "
                                 "returned by receiver_start()")
    (announced,) = struct.unpack_from("<Q", msg, len(_MAGIC_START))
    if announced != m:
        raise SerializationError(f"the receiver starts {announced} OTs but this sender expects "
                                 f"{m}; both parties must agree on the batch size")
    first = bytes(msg[head:])
    s_bits = random_bits(KAPPA)
    base, reply = ot.receiver_respond(first, s_bits.tolist())
    state = ExtSenderState(m=m, s_bits=s_bits, keys=tuple(ot.receiver_keys(base)),
                           tag=_session_tag(first, reply))
    return state, reply


def receiver_extend(state: ExtReceiverState, msg: bytes) -> tuple[ROTReceiverOutput, bytes]:
    """Finish as the receiver: its outputs and the matrix ``u`` to send to the sender."""
    pairs = ot.sender_keys(state.base, msg)
    if len(pairs) != KAPPA:
        raise SerializationError(f"IKNP needs {KAPPA} base OTs, the sender answered "
                                 f"{len(pairs)}; it must run sender_respond() unchanged")
    tag = _session_tag(state.first, bytes(msg))
    g0 = KeyStreams([p[0] for p in pairs])
    g1 = KeyStreams([p[1] for p in pairs])
    nbytes = _padded_bytes(state.m)
    r_bytes = np.zeros(nbytes, dtype=np.uint8)
    r_bytes[: -(-state.m // 8)] = np.packbits(state.choices, bitorder="little")
    u = np.empty((KAPPA, nbytes), dtype=np.uint8)
    out = np.empty((nbytes * 8, 2), dtype="<u8")
    for lo in range(0, nbytes, CHUNK_BYTES):
        hi = min(lo + CHUNK_BYTES, nbytes)
        t = g0.take(hi - lo)
        u[:, lo:hi] = t ^ g1.take(hi - lo) ^ r_bytes[lo:hi]
        rows = transpose_bits(t).view("<u8")
        out[lo * 8: hi * 8] = tccr_hash(rows, lo * 8, tag)
    result = ROTReceiverOutput(choices=state.choices, messages=out[: state.m])
    return result, _MAGIC_U + struct.pack("<Q", state.m) + u.tobytes()


def _parse_u(msg: bytes, m: int) -> np.ndarray:
    head = len(_MAGIC_U) + 8
    nbytes = _padded_bytes(m)
    if not isinstance(msg, (bytes, bytearray)) or len(msg) != head + KAPPA * nbytes:
        got = len(msg) if isinstance(msg, (bytes, bytearray)) else type(msg).__name__
        raise SerializationError(f"IKNP matrix message for {m} OTs must be "
                                 f"{head + KAPPA * nbytes} bytes, got {got}; pass the bytes "
                                 "returned by receiver_extend() unchanged")
    if msg[: len(_MAGIC_U)] != _MAGIC_U or struct.unpack_from("<Q", msg, len(_MAGIC_U))[0] != m:
        raise SerializationError("not an IKNP matrix message for this batch (bad header or "
                                 "batch size); pass the bytes returned by receiver_extend()")
    return np.frombuffer(msg, dtype=np.uint8, offset=head).reshape(KAPPA, nbytes)


def sender_view(msg: bytes, m: int) -> np.ndarray:
    """The matrix ``u`` of a receiver's message as (128, m) bits, for audits and tests."""
    return np.unpackbits(_parse_u(msg, m), axis=1, bitorder="little")[:, :m]


def sender_finish(state: ExtSenderState, msg: bytes) -> ROTSenderOutput:
    """Finish as the sender: its ``m`` random message pairs."""
    u = _parse_u(msg, state.m)
    g = KeyStreams(state.keys)
    nbytes = u.shape[1]
    s_col = state.s_bits.astype(bool)[:, None]
    s_row = np.packbits(state.s_bits, bitorder="little").view("<u8")
    m0 = np.empty((nbytes * 8, 2), dtype="<u8")
    m1 = np.empty_like(m0)
    for lo in range(0, nbytes, CHUNK_BYTES):
        hi = min(lo + CHUNK_BYTES, nbytes)
        q = g.take(hi - lo)
        np.bitwise_xor(q, u[:, lo:hi], out=q, where=s_col)
        rows = transpose_bits(q).view("<u8")
        m0[lo * 8: hi * 8] = tccr_hash(rows, lo * 8, state.tag)
        m1[lo * 8: hi * 8] = tccr_hash(rows ^ s_row, lo * 8, state.tag)
    return ROTSenderOutput(m0=m0[: state.m], m1=m1[: state.m])


def local_random_ots(m: int, choices: np.ndarray | None = None
                     ) -> tuple[ROTSenderOutput, ROTReceiverOutput]:
    """Run both roles of ``m`` random OTs in this process (tests, benchmarks)."""
    r_state, first = receiver_start(m, choices)
    s_state, reply = sender_respond(first, m)
    r_out, u_msg = receiver_extend(r_state, reply)
    return sender_finish(s_state, u_msg), r_out
