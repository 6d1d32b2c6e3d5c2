"""Wire messages of the secure-aggregation protocol (one class per round and direction).

Every message is a frozen dataclass with ``to_bytes()`` / ``from_bytes()``; the bytes are a Veil
envelope (:mod:`veil.he.serialize`) whose parameter hash binds the message to the round's
configuration. Client-to-server messages after the first round carry an HMAC-SHA256 ``tag`` over
``kind || body`` under a key the client shares with the server (X25519 + HKDF, bound to the round
id and the client id), so a submission cannot be replayed into another round, attributed to
another client or altered in transit. Parsing checks every length before reading (no pickle).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from veil.errors import SerializationError
from veil.he.serialize import pack, unpack

__all__ = [
    "ROUND_ID_BYTES",
    "TAG_BYTES",
    "AdvertiseKeys",
    "Roster",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "SurvivorList",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskShares",
]

ROUND_ID_BYTES = 16
TAG_BYTES = 32
KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_U32 = struct.Struct(">I")


class _Reader:
    def __init__(self, data: bytes, kind: str) -> None:
        self.data, self.pos, self.kind = data, 0, kind

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SerializationError(f"truncated {self.kind} message (wanted {n} more bytes at "
                                     f"offset {self.pos} of {len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SerializationError(f"{len(self.data) - self.pos} trailing bytes in {self.kind} "
                                     "message")


def _ids_sorted_unique(ids: list[int], what: str) -> None:
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise SerializationError(f"{what} ids must be strictly increasing, got {ids[:8]}...")


@dataclass(frozen=True)
class _Message:
    KIND: ClassVar[str] = ""

    def body(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def signed_part(self) -> bytes:
        """Bytes covered by the authentication tag: the kind and the body without the tag."""
        return self.KIND.encode() + b"\0" + self.body()

    def to_bytes(self, params_hash: bytes) -> bytes:
        tag = getattr(self, "tag", b"")
        return pack(self.KIND, self.body() + tag, params_hash=params_hash)

    @classmethod
    def _open(cls, data: bytes, params_hash: bytes, max_bytes: int) -> _Reader:
        env = unpack(data, kind=cls.KIND, params_hash=params_hash, max_bytes=max_bytes)
        return _Reader(env.body, cls.KIND)


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Round 0, client -> server: the client's two X25519 public keys for this round and its
    Ed25519 identity signature over them (:func:`.identity.advertise_payload`)."""

    KIND: ClassVar[str] = "veil.secagg.advertise"
    round_id: bytes
    client_id: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes = b""

    def body(self) -> bytes:
        return (self.round_id + _U32.pack(self.client_id) + self.enc_public + self.mask_public
                + self.signature)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int = 4096) -> AdvertiseKeys:
        r = cls._open(data, params_hash, max_bytes)
        msg = cls(r.take(ROUND_ID_BYTES), r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES),
                  r.take(SIGNATURE_BYTES))
        r.done()
        return msg


@dataclass(frozen=True)
class Roster(_Message):
    """Round 0 result, server -> clients: every advertised client (U1), its public keys and its
    identity signature over them (each client verifies every signature itself)."""

    KIND: ClassVar[str] = "veil.secagg.roster"
    round_id: bytes
    # (client_id, enc_public, mask_public, identity signature)
    entries: tuple[tuple[int, bytes, bytes, bytes], ...]

    def body(self) -> bytes:
        parts = [self.round_id, _U32.pack(len(self.entries))]
        for cid, enc, mask, sig in self.entries:
            parts += [_U32.pack(cid), enc, mask, sig]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> Roster:
        r = cls._open(data, params_hash, max_bytes)
        rid, count = r.take(ROUND_ID_BYTES), r.u32()
        entries = tuple((r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES), r.take(SIGNATURE_BYTES))
                        for _ in range(count))
        r.done()
        _ids_sorted_unique([e[0] for e in entries], "roster")
        return cls(rid, entries)


def _pack_cipher_map(items: dict[int, bytes]) -> bytes:
    parts = [_U32.pack(len(items))]
    for cid in sorted(items):
        ct = items[cid]
        parts += [_U32.pack(cid), _U32.pack(len(ct)), ct]
    return b"".join(parts)


def _read_cipher_map(r: _Reader, max_ct: int) -> dict[int, bytes]:
    count = r.u32()
    out: dict[int, bytes] = {}
    ids = []
    for _ in range(count):
        cid, size = r.u32(), r.u32()
        if size > max_ct:
            raise SerializationError(f"share ciphertext of {size} bytes exceeds {max_ct}")
        out[cid] = r.take(size)
        ids.append(cid)
    _ids_sorted_unique(ids, "share ciphertext")
    return out


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1, client -> server: for each other roster member, an AEAD ciphertext (nonce
    included) carrying that member's Shamir shares of this client's self-mask seed and masking
    secret key. The server routes them but cannot read them."""

    KIND: ClassVar[str] = "veil.secagg.shares"
    round_id: bytes
    client_id: int
    ciphertexts: dict[int, bytes]
    tag: bytes = b""

    def body(self) -> bytes:
        return self.round_id + _U32.pack(self.client_id) + _pack_cipher_map(self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> ShareKeys:
        r = cls._open(data, params_hash, max_bytes)
        rid, cid = r.take(ROUND_ID_BYTES), r.u32()
        cts = _read_cipher_map(r, 1024)
        tag = r.take(TAG_BYTES)
        r.done()
        return cls(rid, cid, cts, tag)


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """Round 1 result, server -> one client: the ciphertexts addressed to it, keyed by sender.
    The senders are U2, the clients whose pairwise masks the recipient must add."""

    KIND: ClassVar[str] = "veil.secagg.delivery"
    round_id: bytes
    recipient: int
    ciphertexts: dict[int, bytes]

    def body(self) -> bytes:
        return self.round_id + _U32.pack(self.recipient) + _pack_cipher_map(self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> ShareDelivery:
        r = cls._open(data, params_hash, max_bytes)
        rid, cid = r.take(ROUND_ID_BYTES), r.u32()
        cts = _read_cipher_map(r, 1024)
        r.done()
        return cls(rid, cid, cts)


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Round 2, client -> server: the masked, quantized update (plus the masked clip count)
    as little-endian ring elements."""

    KIND: ClassVar[str] = "veil.secagg.masked"
    round_id: bytes
    client_id: int
    vector: Any  # numpy array of the ring dtype
    tag: bytes = b""

    def body(self) -> bytes:
        import numpy as np

        v = np.ascontiguousarray(self.vector)
        head = self.round_id + _U32.pack(self.client_id) + bytes([v.dtype.itemsize])
        return head + _U32.pack(v.size) + v.astype(v.dtype.newbyteorder("<")).tobytes()

    @classmethod
    def from_bytes(
        cls, data: bytes, *, params_hash: bytes, max_bytes: int, length: int, dtype: Any
    ) -> MaskedInput:
        import numpy as np

        r = cls._open(data, params_hash, max_bytes)
        rid, cid = r.take(ROUND_ID_BYTES), r.u32()
        width, count = r.take(1)[0], r.u32()
        dt = np.dtype(dtype)
        if width != dt.itemsize or count != length:
            raise SerializationError(
                f"masked input has {count} elements of {width} bytes; this round expects "
                f"{length} of {dt.itemsize}"
            )
        raw = r.take(count * width)
        tag = r.take(TAG_BYTES)
        r.done()
        vec = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt)
        return cls(rid, cid, vec, tag)


def _pack_ids(ids: tuple[int, ...]) -> bytes:
    return _U32.pack(len(ids)) + b"".join(_U32.pack(c) for c in ids)


def _read_ids(r: _Reader, what: str) -> tuple[int, ...]:
    count = r.u32()
    if count > (len(r.data) - r.pos) // 4:
        raise SerializationError(f"{what} list claims {count} ids, more than the message holds")
    ids = tuple(r.u32() for _ in range(count))
    _ids_sorted_unique(list(ids), what)
    return ids


@dataclass(frozen=True)
class SurvivorList(_Message):
    """Round 3 (consistency check), server -> clients: the clients whose masked inputs arrived
    (U3). Each client signs the list it was shown; it reveals nothing yet."""

    KIND: ClassVar[str] = "veil.secagg.survivors"
    round_id: bytes
    survivors: tuple[int, ...]

    def body(self) -> bytes:
        return self.round_id + _pack_ids(self.survivors)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> SurvivorList:
        r = cls._open(data, params_hash, max_bytes)
        rid = r.take(ROUND_ID_BYTES)
        ids = _read_ids(r, "survivor")
        r.done()
        return cls(rid, ids)


@dataclass(frozen=True)
class ConsistencySignature(_Message):
    """Round 3, client -> server: the client's Ed25519 identity signature over the survivor list
    it was shown (:func:`.identity.consistency_payload`)."""

    KIND: ClassVar[str] = "veil.secagg.consistency"
    round_id: bytes
    client_id: int
    signature: bytes
    tag: bytes = b""

    def body(self) -> bytes:
        return self.round_id + _U32.pack(self.client_id) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes,
                   max_bytes: int = 4096) -> ConsistencySignature:
        r = cls._open(data, params_hash, max_bytes)
        msg = cls(r.take(ROUND_ID_BYTES), r.u32(), r.take(SIGNATURE_BYTES), r.take(TAG_BYTES))
        r.done()
        return msg


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Round 4, server -> clients: the survivor list U3 again and the consistency signatures the
    server collected (signers U4, strictly increasing ids). Every member of U2 not in U3 counts
    as dropped: its masking key will be reconstructed."""

    KIND: ClassVar[str] = "veil.secagg.unmask_request"
    round_id: bytes
    survivors: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def body(self) -> bytes:
        parts = [self.round_id, _pack_ids(self.survivors), _U32.pack(len(self.signatures))]
        for cid, sig in self.signatures:
            parts += [_U32.pack(cid), sig]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> UnmaskRequest:
        r = cls._open(data, params_hash, max_bytes)
        rid = r.take(ROUND_ID_BYTES)
        ids = _read_ids(r, "survivor")
        count = r.u32()
        if count > (len(r.data) - r.pos) // (4 + SIGNATURE_BYTES):
            raise SerializationError(f"unmask request claims {count} signatures, more than the "
                                     "message holds")
        sigs = tuple((r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(count))
        r.done()
        _ids_sorted_unique([c for c, _ in sigs], "signer")
        return cls(rid, ids, sigs)


@dataclass(frozen=True)
class UnmaskShares(_Message):
    """Round 3, client -> server: shares of survivors' self-mask seeds and of dropped clients'
    masking secret keys (never both for the same owner)."""

    KIND: ClassVar[str] = "veil.secagg.unmask"
    round_id: bytes
    client_id: int
    seed_shares: dict[int, bytes]  # owner -> 66-byte share of the owner's self-mask seed
    key_shares: dict[int, bytes]  # owner -> 66-byte share of the owner's masking secret key
    tag: bytes = b""

    def body(self) -> bytes:
        return (self.round_id + _U32.pack(self.client_id) + _pack_cipher_map(self.seed_shares)
                + _pack_cipher_map(self.key_shares))

    @classmethod
    def from_bytes(cls, data: bytes, *, params_hash: bytes, max_bytes: int) -> UnmaskShares:
        r = cls._open(data, params_hash, max_bytes)
        rid, cid = r.take(ROUND_ID_BYTES), r.u32()
        seeds, keys = _read_cipher_map(r, 66), _read_cipher_map(r, 66)
        tag = r.take(TAG_BYTES)
        r.done()
        return cls(rid, cid, seeds, keys, tag)
