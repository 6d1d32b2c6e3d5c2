"""Secure aggregation with dropouts (Bonawitz et al., CCS 2017), semi-honest server.

Four rounds, each a message from every live client to the server and a reply from the server:

0. **advertise**: client ``u`` sends two fresh X25519 public keys (``enc`` for share encryption
   and server authentication, ``mask`` for pairwise masks). The server replies with the roster U1.
1. **share**: ``u`` draws a 256-bit self-mask seed ``b_u`` and Shamir-shares ``b_u`` and its
   ``mask`` secret key t-of-|U1| (field GF(2**521 - 1)); the shares for ``v`` are encrypted with
   ChaCha20-Poly1305 under a key from X25519(enc_u, enc_v) and routed through the server. U2 is
   the set of clients whose shares arrived.
2. **masked**: ``u`` sends ``y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} +-PRG(s_uv)`` in
   Z_{2**k}, where ``x_u`` is its quantized update followed by its clip count and ``s_uv`` a
   256-bit key from X25519(mask_u, mask_v) (AES-256-CTR PRG). U3: inputs that arrived.
3. **unmask**: each ``u`` in U3 reveals its shares of ``b_v`` for ``v`` in U3 and of the ``mask``
   key for ``v`` in U2 \\ U3, never both for the same ``v``. With ``t`` responses the server
   removes every self mask and the pairwise masks of the dropped clients.

What is revealed to whom: the server learns the sum of the updates (and the total clip count) of
the >= t clients in U3, and who dropped when; nothing about any individual update as long as it
colludes with fewer than t clients. Clients learn nothing about other updates. Every round aborts
with :class:`~veil.errors.AggregationAborted` when fewer than ``t`` clients remain; then nothing
is revealed at all. Client-to-server messages are authenticated (HMAC-SHA256 bound to round id
and client id): replays, duplicates and forgeries are rejected with
:class:`~veil.errors.SerializationError` and change no state. See docs/security/aggregation.md.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from veil.errors import (
    AggregationAborted,
    ConfigurationError,
    InsecureParametersError,
    SerializationError,
)
from veil.he.serialize import params_digest
from veil.protocols import shamir
from veil.protocols._secagg_messages import (
    ROUND_ID_BYTES,
    AdvertiseKeys,
    MaskedInput,
    Roster,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from veil.protocols._secagg_quant import Quantizer
from veil.protocols.prg import SEED_BYTES, expand, hkdf, new_seed, ring_dtype

__all__ = ["PHASES", "SecAggConfig", "SecAggClient", "SecAggServer", "SecAggResult"]

PHASES = ("advertise", "share", "masked", "unmask")
_U32 = struct.Struct(">I")
_MAX_CLIENTS = 1 << 16


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one aggregation round, known to the server and every client.

    ``threshold`` (t) defaults to ``num_clients // 2 + 1``; values ``<= num_clients / 2`` need
    ``allow_insecure=True``: two disjoint groups of t clients could then be led to reveal both
    the seed shares and the key shares of the same client by a server lying about dropouts.
    ``ring_bits`` (k): masked vectors live in Z_{2**k}; quantization leaves room for the sum of
    ``num_clients`` updates, and the clip-count coordinate (at most ``vector_length`` per client)
    must not wrap either.
    """

    num_clients: int
    vector_length: int
    clip: float
    threshold: int = 0
    ring_bits: int = 32
    allow_insecure: bool = field(default=False, kw_only=True)
    quantizer: Quantizer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.num_clients
        if not isinstance(n, int) or not 2 <= n <= _MAX_CLIENTS:
            raise ConfigurationError(f"num_clients must be an integer in [2, {_MAX_CLIENTS}], "
                                     f"got {n!r}")
        if not isinstance(self.vector_length, int) or self.vector_length < 1:
            raise ConfigurationError(f"vector_length must be a positive integer, got "
                                     f"{self.vector_length!r}")
        t = self.threshold or n // 2 + 1
        if not isinstance(t, int) or not 1 <= t <= n:
            raise ConfigurationError(f"threshold must be in [1, num_clients={n}], got {t!r}")
        if 2 * t <= n and not self.allow_insecure:
            raise InsecureParametersError(
                f"threshold {t} of {n} clients is not a strict majority; use at least "
                f"{n // 2 + 1} or pass allow_insecure=True"
            )
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "quantizer", Quantizer(clip=float(self.clip), max_addends=n,
                                                        ring_bits=self.ring_bits))
        if n * self.vector_length >= 1 << self.ring_bits:
            raise ConfigurationError(
                f"the clip count of {n} clients x {self.vector_length} values could wrap a "
                f"{self.ring_bits}-bit ring; raise ring_bits"
            )

    @property
    def params_hash(self) -> bytes:
        return params_digest({"protocol": "veil.secagg/1", **self.quantizer.describe(),
                              "num_clients": self.num_clients, "threshold": self.threshold,
                              "vector_length": self.vector_length})

    @property
    def masked_length(self) -> int:
        """Ring elements per masked input: the update plus one clip-count coordinate."""
        return self.vector_length + 1

    def max_message_bytes(self) -> int:
        """Upper bound on any message of this round (used as the parsing size limit)."""
        per_client = 4 + 4 + 12 + 2 * shamir.SHARE_BYTES + 16 + 8
        return max(self.masked_length * 8, self.num_clients * per_client) + 4096


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns: the sum over ``survivors`` and the total number of clipped values.

    ``quantized_total`` is the exact integer sum of the survivors' quantized updates; ``total``
    is its dequantization (error at most ``len(survivors) * quantizer.step / 2`` per coordinate
    beyond clipping).
    """

    total: Any
    quantized_total: Any
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    clipped: int

    @property
    def mean(self) -> Any:
        return self.total / len(self.survivors)


def _x25519(private: Any, public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SerializationError(
            "X25519 key agreement failed (low-order or malformed public key); the peer's "
            "advertised key is invalid"
        ) from exc


def _pair_info(label: bytes, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return label + _U32.pack(lo) + _U32.pack(hi)


def _mac_key(shared: bytes, round_id: bytes, client_id: int) -> bytes:
    return hkdf(shared, salt=round_id, info=b"veil-secagg-mac" + _U32.pack(client_id))


def _ring_mask(vec: Any, ring_bits: int) -> Any:
    if ring_bits < vec.dtype.itemsize * 8:
        vec &= vec.dtype.type((1 << ring_bits) - 1)
    return vec


def _share_ad(round_id: bytes, sender: int, recipient: int) -> bytes:
    return b"veil-secagg-share" + round_id + _U32.pack(sender) + _U32.pack(recipient)


class SecAggClient:
    """One client's state for one round. Methods take and return wire bytes, in round order.

    Key material (X25519 keys, the self-mask seed) is fresh per round and never leaves the
    object except as Shamir shares encrypted to other clients and, in round 3, the shares the
    protocol allows.
    """

    def __init__(self, client_id: int, config: SecAggConfig, *, round_id: bytes,
                 server_public_key: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not isinstance(client_id, int) or not 0 <= client_id < config.num_clients:
            raise ConfigurationError(f"client_id must be in [0, {config.num_clients}), got "
                                     f"{client_id!r}")
        if len(round_id) != ROUND_ID_BYTES or len(server_public_key) != 32:
            raise ConfigurationError("round_id must be 16 bytes and server_public_key 32 bytes; "
                                     "take both from SecAggServer")
        self.client_id, self.config, self.round_id = client_id, config, round_id
        self._enc = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._seed = new_seed()
        self._mac = _mac_key(_x25519(self._enc, server_public_key), round_id, client_id)
        self._phase = 0
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._own_shares: tuple[int, int] = (0, 0)
        self._received: dict[int, tuple[int, int]] = {}
        self._u2: tuple[int, ...] = ()

    def _advance(self, expected: int, name: str) -> None:
        if self._phase != expected:
            raise ConfigurationError(
                f"client {self.client_id}: {name} called out of order (at step {self._phase}, "
                f"expected {expected}); a client runs advertise, share_keys, masked_input, "
                "unmask once each"
            )

    def _sign(self, msg: Any) -> bytes:
        tag = hmac.new(self._mac, msg.signed_part(), "sha256").digest()
        return replace(msg, tag=tag).to_bytes(self.config.params_hash)

    def _raw(self, key: Any) -> bytes:
        return key.public_key().public_bytes_raw()

    def advertise(self) -> bytes:
        """Round 0: this client's public keys."""
        self._advance(0, "advertise")
        self._phase = 1
        msg = AdvertiseKeys(self.round_id, self.client_id, self._raw(self._enc),
                            self._raw(self._mask))
        return msg.to_bytes(self.config.params_hash)

    def share_keys(self, roster: bytes) -> bytes:
        """Round 1: encrypted Shamir shares of the seed and masking key for every roster member."""
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._advance(1, "share_keys")
        cfg = self.config
        msg = Roster.from_bytes(roster, params_hash=cfg.params_hash,
                                max_bytes=cfg.max_message_bytes())
        entries = {cid: (enc, mask) for cid, enc, mask in msg.entries}
        if msg.round_id != self.round_id:
            raise SerializationError("roster is for another round; refusing it")
        if entries.get(self.client_id) != (self._raw(self._enc), self._raw(self._mask)):
            raise SerializationError(f"roster does not list client {self.client_id} with the "
                                     "keys it advertised; refusing it")
        if any(not 0 <= c < cfg.num_clients for c in entries):
            raise SerializationError(f"roster names client ids outside [0, {cfg.num_clients})")
        keys = [k for pair in entries.values() for k in pair]
        if len(set(keys)) != len(keys):
            raise SerializationError("roster repeats a public key; refusing it")
        if len(entries) < cfg.threshold:
            raise AggregationAborted(
                f"only {len(entries)} clients advertised keys, below the threshold "
                f"{cfg.threshold}; client {self.client_id} stops here"
            )
        xs = [c + 1 for c in sorted(entries)]
        seed_sh = shamir.split(int.from_bytes(self._seed, "big"), threshold=cfg.threshold, xs=xs)
        mask_int = int.from_bytes(self._mask.private_bytes_raw(), "big")
        key_sh = shamir.split(mask_int, threshold=cfg.threshold, xs=xs)
        cts: dict[int, bytes] = {}
        for v, (enc_v, _) in entries.items():
            if v == self.client_id:
                continue
            key = hkdf(_x25519(self._enc, enc_v), salt=self.round_id,
                       info=_pair_info(b"veil-secagg-share-key", self.client_id, v))
            nonce = os.urandom(12)
            plain = shamir.share_to_bytes(seed_sh[v + 1]) + shamir.share_to_bytes(key_sh[v + 1])
            cts[v] = nonce + ChaCha20Poly1305(key).encrypt(
                nonce, plain, _share_ad(self.round_id, self.client_id, v))
        self._roster = entries
        self._own_shares = (seed_sh[self.client_id + 1], key_sh[self.client_id + 1])
        self._phase = 2
        return self._sign(ShareKeys(self.round_id, self.client_id, cts))

    def masked_input(self, update: Any, delivery: bytes) -> bytes:
        """Round 2: the masked quantized update. ``delivery`` lists the senders U2."""
        import numpy as np
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._advance(2, "masked_input")
        cfg = self.config
        q, clipped = cfg.quantizer.quantize(update)
        if q.size != cfg.vector_length:
            raise ConfigurationError(f"update has {q.size} values; this round aggregates "
                                     f"vectors of length {cfg.vector_length}")
        msg = ShareDelivery.from_bytes(delivery, params_hash=cfg.params_hash,
                                       max_bytes=cfg.max_message_bytes())
        if msg.round_id != self.round_id or msg.recipient != self.client_id:
            raise SerializationError("share delivery is for another round or client")
        senders = set(msg.ciphertexts)
        if self.client_id in senders or not senders <= set(self._roster):
            raise SerializationError("share delivery names senders outside the roster")
        u2 = tuple(sorted(senders | {self.client_id}))
        if len(u2) < cfg.threshold:
            raise AggregationAborted(f"only {len(u2)} clients shared keys, below the threshold "
                                     f"{cfg.threshold}; client {self.client_id} stops here")
        received: dict[int, tuple[int, int]] = {}
        for v, blob in msg.ciphertexts.items():
            key = hkdf(_x25519(self._enc, self._roster[v][0]), salt=self.round_id,
                       info=_pair_info(b"veil-secagg-share-key", v, self.client_id))
            try:
                plain = ChaCha20Poly1305(key).decrypt(
                    blob[:12], blob[12:], _share_ad(self.round_id, v, self.client_id))
            except InvalidTag as exc:
                raise SerializationError(f"share ciphertext from client {v} failed "
                                         "authentication (tampered or misrouted)") from exc
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise SerializationError(f"share message from client {v} has a wrong length")
            received[v] = (shamir.share_from_bytes(plain[:66]), shamir.share_from_bytes(plain[66:]))
        dt = ring_dtype(cfg.ring_bits)
        acc = np.empty(cfg.masked_length, dtype=dt)
        acc[:-1] = q
        acc[-1] = clipped
        acc += expand(self._seed, cfg.masked_length, ring_bits=cfg.ring_bits,
                      domain=b"veil-secagg-self" + self.round_id)
        for v in u2:
            if v == self.client_id:
                continue
            mask = expand(self._pair_seed(self._mask, self._roster[v][1], v),
                          cfg.masked_length, ring_bits=cfg.ring_bits,
                          domain=b"veil-secagg-pair" + self.round_id)
            if self.client_id < v:
                acc += mask
            else:
                acc -= mask
        self._received, self._u2, self._phase = received, u2, 3
        acc = _ring_mask(acc, cfg.ring_bits)
        return self._sign(MaskedInput(self.round_id, self.client_id, acc))

    def _pair_seed(self, private: Any, peer_public: bytes, peer: int) -> bytes:
        return hkdf(_x25519(private, peer_public), salt=self.round_id,
                    info=_pair_info(b"veil-secagg-pair", self.client_id, peer))

    def unmask(self, request: bytes) -> bytes:
        """Round 3: seed shares for survivors, key shares for dropped clients, never both."""
        self._advance(3, "unmask")
        cfg = self.config
        msg = UnmaskRequest.from_bytes(request, params_hash=cfg.params_hash,
                                       max_bytes=cfg.max_message_bytes())
        if msg.round_id != self.round_id:
            raise SerializationError("unmask request is for another round")
        survivors = set(msg.survivors)
        if not survivors <= set(self._u2):
            raise SerializationError("unmask request lists survivors that never shared keys")
        if self.client_id not in survivors:
            raise AggregationAborted(
                f"the server lists client {self.client_id} as dropped although it sent its "
                "masked input; revealing shares now could expose it, so it stops here"
            )
        if len(survivors) < cfg.threshold:
            raise AggregationAborted(f"only {len(survivors)} masked inputs arrived, below the "
                                     f"threshold {cfg.threshold}; refusing to unmask")
        shares = dict(self._received)
        shares[self.client_id] = self._own_shares
        seed = {v: shamir.share_to_bytes(shares[v][0]) for v in sorted(survivors)}
        keys = {v: shamir.share_to_bytes(shares[v][1]) for v in self._u2 if v not in survivors}
        self._phase = 4  # answered once: a second (different) request is refused
        return self._sign(UnmaskShares(self.round_id, self.client_id, seed, keys))


class SecAggServer:
    """The server's state for one round: collects messages, answers each round, unmasks the sum.

    ``receive_*`` methods take wire bytes from one client and raise
    :class:`~veil.errors.SerializationError` (leaving the state unchanged) for malformed,
    unauthenticated, replayed, duplicated or late messages; ``close_*`` methods end a round and
    raise :class:`~veil.errors.AggregationAborted` below the threshold.
    """

    def __init__(self, config: SecAggConfig, *, round_id: bytes | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self.config = config
        self.round_id = round_id if round_id is not None else os.urandom(ROUND_ID_BYTES)
        if len(self.round_id) != ROUND_ID_BYTES:
            raise ConfigurationError(f"round_id must be {ROUND_ID_BYTES} bytes")
        self._key = X25519PrivateKey.generate()
        self.public_key: bytes = self._key.public_key().public_bytes_raw()
        self._phase = 0
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._macs: dict[int, bytes] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._u1: tuple[int, ...] = ()
        self._u2: tuple[int, ...] = ()
        self._u3: tuple[int, ...] = ()
        self._acc: Any = None
        self._masked_from: set[int] = set()
        self._unmask: dict[int, UnmaskShares] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _expect(self, phase: int, what: str) -> None:
        if self._phase != phase:
            raise SerializationError(f"{what} arrived while the round is in {self._state()}; "
                                     "late or out-of-order messages are rejected")

    def _state(self) -> str:
        return ("advertise", "share", "masked", "unmask", "finished")[min(self._phase, 4)]

    def _check(self, msg: Any, allowed: tuple[int, ...] | None, seen: Any) -> None:
        cid = msg.client_id
        if msg.round_id != self.round_id:
            raise SerializationError(f"message from client {cid} is bound to round "
                                     f"{msg.round_id.hex()[:8]}…, not this round "
                                     f"{self.round_id.hex()[:8]}…: replay rejected")
        if allowed is not None and cid not in allowed:
            raise SerializationError(f"client {cid} may not send this message in this round")
        if cid in seen:
            raise SerializationError(f"duplicate submission from client {cid} rejected; each "
                                     "client submits once per round")
        if allowed is not None:
            good = hmac.new(self._macs[cid], msg.signed_part(), "sha256").digest()
            if not hmac.compare_digest(good, msg.tag):
                raise SerializationError(f"authentication tag of client {cid}'s message is "
                                         "wrong (forged, altered or from another session)")

    def _abort_below(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._phase = 5
            self._acc = None
            raise AggregationAborted(
                f"round aborted: only {count} clients {what}, below the threshold "
                f"{self.config.threshold}; nothing was revealed. Retry with more clients or a "
                "lower threshold"
            )

    # -- round 0 ---------------------------------------------------------------------------
    def receive_advertise(self, data: bytes) -> None:
        self._expect(0, "an advertise message")
        cfg = self.config
        msg = AdvertiseKeys.from_bytes(data, params_hash=cfg.params_hash)
        self._check(msg, None, self._adverts)
        if not 0 <= msg.client_id < cfg.num_clients:
            raise SerializationError(f"client id {msg.client_id} outside [0, {cfg.num_clients})")
        known = {k for a in self._adverts.values() for k in (a.enc_public, a.mask_public)}
        if msg.enc_public in known or msg.mask_public in known or msg.enc_public == msg.mask_public:
            raise SerializationError(f"client {msg.client_id} advertised a reused public key")
        mac = _mac_key(_x25519(self._key, msg.enc_public), self.round_id, msg.client_id)
        self._adverts[msg.client_id] = msg
        self._macs[msg.client_id] = mac

    def close_advertise(self) -> bytes:
        self._expect(0, "close_advertise")
        self._abort_below(len(self._adverts), "advertised keys")
        self._u1 = tuple(sorted(self._adverts))
        self._phase = 1
        entries = tuple((c, self._adverts[c].enc_public, self._adverts[c].mask_public)
                        for c in self._u1)
        return Roster(self.round_id, entries).to_bytes(self.config.params_hash)

    # -- round 1 ---------------------------------------------------------------------------
    def receive_shares(self, data: bytes) -> None:
        self._expect(1, "a share message")
        cfg = self.config
        msg = ShareKeys.from_bytes(data, params_hash=cfg.params_hash,
                                   max_bytes=cfg.max_message_bytes())
        self._check(msg, self._u1, self._shares)
        if set(msg.ciphertexts) != set(self._u1) - {msg.client_id}:
            raise SerializationError(f"client {msg.client_id} must send one share ciphertext "
                                     "to every other roster member")
        self._shares[msg.client_id] = msg

    def close_shares(self) -> dict[int, bytes]:
        """End round 1; returns each client's delivery (ciphertexts addressed to it)."""
        self._expect(1, "close_shares")
        self._abort_below(len(self._shares), "shared their keys")
        self._u2 = tuple(sorted(self._shares))
        self._phase = 2
        self._acc = None
        return {v: ShareDelivery(self.round_id, v, {u: self._shares[u].ciphertexts[v]
                                                    for u in self._u2 if u != v}
                                 ).to_bytes(self.config.params_hash)
                for v in self._u2}

    # -- round 2 ---------------------------------------------------------------------------
    def receive_masked(self, data: bytes) -> None:
        self._expect(2, "a masked input")
        cfg = self.config
        msg = MaskedInput.from_bytes(data, params_hash=cfg.params_hash,
                                     max_bytes=cfg.max_message_bytes(),
                                     length=cfg.masked_length, dtype=ring_dtype(cfg.ring_bits))
        self._check(msg, self._u2, self._masked_from)
        if self._acc is None:
            self._acc = msg.vector.copy()
        else:
            self._acc += msg.vector
        self._masked_from.add(msg.client_id)

    def close_masked(self) -> bytes:
        self._expect(2, "close_masked")
        self._abort_below(len(self._masked_from), "sent masked inputs")
        self._u3 = tuple(sorted(self._masked_from))
        self._phase = 3
        return UnmaskRequest(self.round_id, self._u3).to_bytes(self.config.params_hash)

    # -- round 3 ---------------------------------------------------------------------------
    def receive_unmask(self, data: bytes) -> None:
        self._expect(3, "an unmask response")
        cfg = self.config
        msg = UnmaskShares.from_bytes(data, params_hash=cfg.params_hash,
                                      max_bytes=cfg.max_message_bytes())
        self._check(msg, self._u3, self._unmask)
        dropped = set(self._u2) - set(self._u3)
        # The server never holds a seed share and a key share of the same client.
        if set(msg.seed_shares) != set(self._u3) or set(msg.key_shares) != dropped:
            raise SerializationError(
                f"client {msg.client_id} must reveal seed shares of exactly the survivors and "
                "key shares of exactly the dropped clients"
            )
        try:
            for blob in (*msg.seed_shares.values(), *msg.key_shares.values()):
                shamir.share_from_bytes(blob)
        except ConfigurationError as exc:
            raise SerializationError(f"client {msg.client_id} sent an invalid share") from exc
        self._unmask[msg.client_id] = msg

    def finish(self) -> SecAggResult:
        """Reconstruct the masks and return the aggregate (the only thing the server learns)."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._expect(3, "finish")
        cfg = self.config
        self._abort_below(len(self._unmask), "answered the unmask request")
        helpers = sorted(self._unmask)[: cfg.threshold]
        coeffs = shamir.lagrange_at_zero([h + 1 for h in helpers])

        def secret(owner: int, seed_share: bool) -> bytes:
            shares = {}
            for h in helpers:
                m = self._unmask[h]
                blob = (m.seed_shares if seed_share else m.key_shares)[owner]
                shares[h + 1] = shamir.share_from_bytes(blob)
            value = shamir.reconstruct(shares, threshold=cfg.threshold, coefficients=coeffs)
            if value >> (8 * SEED_BYTES):
                self._phase = 5
                raise AggregationAborted(f"shares of client {owner} are inconsistent; aborting")
            return value.to_bytes(SEED_BYTES, "big")

        acc = self._acc
        for u in self._u3:
            seed = secret(u, True)
            acc -= expand(seed, cfg.masked_length, ring_bits=cfg.ring_bits,
                          domain=b"veil-secagg-self" + self.round_id)
        dropped = [v for v in self._u2 if v not in self._u3]
        for v in dropped:
            key = X25519PrivateKey.from_private_bytes(secret(v, False))
            if key.public_key().public_bytes_raw() != self._adverts[v].mask_public:
                self._phase = 5
                raise AggregationAborted(f"reconstructed masking key of client {v} does not "
                                         "match its advertised key; aborting")
            for u in self._u3:
                pair = hkdf(_x25519(key, self._adverts[u].mask_public), salt=self.round_id,
                            info=_pair_info(b"veil-secagg-pair", u, v))
                mask = expand(pair, cfg.masked_length, ring_bits=cfg.ring_bits,
                              domain=b"veil-secagg-pair" + self.round_id)
                if u < v:
                    acc -= mask
                else:
                    acc += mask
        acc = _ring_mask(acc, cfg.ring_bits)
        self._phase = 4
        self._acc = None
        q_total = acc[:-1].astype("uint64")
        total = cfg.quantizer.dequantize_sum(q_total, len(self._u3))
        n_adv = set(range(cfg.num_clients))
        dropped_by_phase = {
            "advertise": tuple(sorted(n_adv - set(self._u1))),
            "share": tuple(sorted(set(self._u1) - set(self._u2))),
            "masked": tuple(dropped),
            "unmask": tuple(sorted(set(self._u3) - set(self._unmask))),
        }
        return SecAggResult(total=total, quantized_total=q_total, survivors=self._u3,
                            dropped=dropped_by_phase, clipped=int(acc[-1]))
