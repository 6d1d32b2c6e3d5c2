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

SecAgg+ (Bell et al., CCS 2020): with ``SecAggConfig(..., neighbours=k)`` "every other client"
above becomes "every neighbour" in a k-regular graph keyed by the round id, and the Shamir
threshold becomes k // 2 + 1 of the k + 1 members of a neighbourhood.

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
from dataclasses import replace
from typing import Any

from veil.errors import AggregationAborted, ConfigurationError, SerializationError
from veil.protocols import shamir
from veil.protocols._secagg_common import (
    PHASES,
    SecAggConfig,
    SecAggResult,
    _mac_key,
    _pair_info,
    _ring_mask,
    _share_ad,
    _x25519,
)
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
from veil.protocols._secagg_server import SecAggServer
from veil.protocols.prg import expand, hkdf, new_seed, ring_dtype

__all__ = ["PHASES", "SecAggConfig", "SecAggClient", "SecAggServer", "SecAggResult"]


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
        self._nbrs: frozenset[int] = frozenset()
        self._share_t = config.threshold
        self._aead_keys: dict[int, bytes] = {}

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
        nbrs = cfg.graph(entries, self.round_id)[self.client_id]
        share_t = cfg.share_threshold(len(entries))
        xs = [c + 1 for c in sorted(nbrs | {self.client_id})]
        seed_sh = shamir.split(int.from_bytes(self._seed, "big"), threshold=share_t, xs=xs)
        mask_int = int.from_bytes(self._mask.private_bytes_raw(), "big")
        key_sh = shamir.split(mask_int, threshold=share_t, xs=xs)
        cts: dict[int, bytes] = {}
        self._aead_keys = {}
        for v in sorted(nbrs):
            enc_v = entries[v][0]
            key = hkdf(_x25519(self._enc, enc_v), salt=self.round_id,
                       info=_pair_info(b"veil-secagg-share-key", self.client_id, v))
            self._aead_keys[v] = key  # the same key decrypts v's shares for us in round 2
            nonce = os.urandom(12)
            plain = shamir.share_to_bytes(seed_sh[v + 1]) + shamir.share_to_bytes(key_sh[v + 1])
            cts[v] = nonce + ChaCha20Poly1305(key).encrypt(
                nonce, plain, _share_ad(self.round_id, self.client_id, v))
        self._roster, self._nbrs, self._share_t = entries, nbrs, share_t
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
        if not senders <= self._nbrs:
            raise SerializationError("share delivery names senders that are not neighbours of "
                                     f"client {self.client_id}")
        u2 = tuple(sorted(senders | {self.client_id}))  # U2 within this client's neighbourhood
        if len(u2) < self._share_t:
            raise AggregationAborted(f"only {len(u2)} clients (of this neighbourhood) shared "
                                     f"keys, below the threshold {self._share_t}; client "
                                     f"{self.client_id} stops here")
        received: dict[int, tuple[int, int]] = {}
        for v, blob in msg.ciphertexts.items():
            try:
                plain = ChaCha20Poly1305(self._aead_keys[v]).decrypt(
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
        self._aead_keys = {}
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
        if not survivors <= set(self._roster) or not (
                survivors & (self._nbrs | {self.client_id})) <= set(self._u2):
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
        seed = {v: shamir.share_to_bytes(shares[v][0]) for v in self._u2 if v in survivors}
        keys = {v: shamir.share_to_bytes(shares[v][1]) for v in self._u2 if v not in survivors}
        self._phase = 4  # answered once: a second (different) request is refused
        return self._sign(UnmaskShares(self.round_id, self.client_id, seed, keys))
