"""Secure aggregation with dropouts (Bonawitz et al., CCS 2017), malicious-server variant.

Five rounds, each a message from every live client to the server and a reply from the server.
Every client holds a long-term Ed25519 identity key, and knows every client's verification key
from its own configuration (an :class:`~.identity.IdentityDirectory`), not from the
server:

0. **advertise**: client ``u`` sends two fresh X25519 public keys (``enc`` for share encryption
   and server authentication, ``mask`` for pairwise masks), signed with its identity key. The
   server replies with the roster U1; every client verifies every signature in it.
1. **share**: ``u`` draws a 256-bit self-mask seed ``b_u`` and Shamir-shares ``b_u`` and its
   ``mask`` secret key t-of-|U1| (field GF(2**521 - 1)); the shares for ``v`` are encrypted with
   ChaCha20-Poly1305 under a key from X25519(enc_u, enc_v) and routed through the server. U2 is
   the set of clients whose shares arrived.
2. **masked**: ``u`` sends ``y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} +-PRG(s_uv)`` in
   Z_{2**k}, where ``x_u`` is its quantized update followed by its clip count and ``s_uv`` a
   256-bit key from X25519(mask_u, mask_v) (AES-256-CTR PRG). U3: inputs that arrived.
3. **consistency**: the server sends U3; each ``u`` in U3 checks U3 against its own view
   (a subset of U2 containing itself, at least ``t`` members) and signs (round id, roster, U3).
4. **unmask**: the server forwards the signatures it collected (signers U4 within U3). ``u``
   verifies at least ``t`` valid signatures by distinct clients over the *same* U3 it signed,
   then reveals its shares of ``b_v`` for ``v`` in U3 and of the ``mask`` key for ``v`` in
   U2 \\ U3, never both for the same ``v``. With ``t`` responses the server removes every self
   mask and the pairwise masks of the dropped clients.

Honest clients sign one list per round, so with ``2t > n`` two different lists cannot both
collect ``t`` signatures: a server that shows clients inconsistent survivor lists (to collect
both kinds of share of one client) gets no shares at all.

SecAgg+ (Bell et al., CCS 2020): with ``SecAggConfig(..., neighbours=k)`` "every other client"
above becomes "every neighbour" in a k-regular graph keyed by the round id, and the Shamir
threshold becomes k // 2 + 1 of the k + 1 members of a neighbourhood.

What is revealed to whom: the server, even if it deviates from the protocol, learns the sum of
the updates (and the total clip count) of a set of at least t clients (it may drop honest
clients on purpose to shrink that set to t), and who dropped when; with c clients colluding
with it, nothing beyond the sum of the honest clients in that set as long as ``2t > n + c``.
Sybil clients are excluded by the identity directory (no PKI, no such guarantee). Clients learn
nothing about other updates. Every round aborts with :class:`~veil.errors.AggregationAborted`
when fewer than ``t`` clients remain; then nothing is revealed at all. Client-to-server
messages are authenticated (HMAC-SHA256 bound to round id and client id): replays, duplicates
and forgeries are rejected with :class:`~veil.errors.SerializationError` and change no state.
See docs/security/aggregation.md.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import replace
from typing import Any

from veil.errors import AggregationAborted, ConfigurationError, SerializationError
from veil.protocols import shamir
from veil.protocols.prg import expand, hkdf, new_seed, ring_dtype
from veil.protocols.secagg import messages as wire
from veil.protocols.secagg.common import (
    SecAggConfig,
    mac_key,
    pair_info,
    ring_mask,
    share_ad,
    x25519,
)
from veil.protocols.secagg.identity import (
    IdentityDirectory,
    advertise_payload,
    check_identity_key,
    consistency_payload,
    roster_digest,
)

__all__ = ["SecAggClient"]


class SecAggClient:
    """One client's state for one round. Methods take and return wire bytes, in round order.

    ``identity_key`` is the client's long-term Ed25519 private key and ``directory`` every
    client's verification key, both from the client's own configuration. ``config`` (threshold,
    ``allow_insecure``, quantization) must also come from the client's configuration: nothing
    the server sends changes what the client enforces.

    Key material (X25519 keys, the self-mask seed) is fresh per round and never leaves the
    object except as Shamir shares encrypted to other clients and, in round 4, the shares the
    protocol allows.
    """

    def __init__(self, client_id: int, config: SecAggConfig, *, round_id: bytes,
                 server_public_key: bytes, identity_key: Any,
                 directory: IdentityDirectory) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not isinstance(client_id, int) or not 0 <= client_id < config.num_clients:
            raise ConfigurationError(f"client_id must be in [0, {config.num_clients}), got "
                                     f"{client_id!r}")
        if len(round_id) != wire.ROUND_ID_BYTES or len(server_public_key) != 32:
            raise ConfigurationError("round_id must be 16 bytes and server_public_key 32 bytes; "
                                     "take both from SecAggServer")
        if not isinstance(directory, IdentityDirectory):
            raise ConfigurationError("directory must be an IdentityDirectory from the client's "
                                     f"own configuration, got {type(directory).__name__}")
        check_identity_key(identity_key, directory, client_id)
        self.client_id, self.config, self.round_id = client_id, config, round_id
        self._identity, self._directory = identity_key, directory
        self._enc = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._seed = new_seed()
        self._mac = mac_key(x25519(self._enc, server_public_key), round_id, client_id)
        self._phase = 0
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._roster_digest = b""
        self._own_shares: tuple[int, int] = (0, 0)
        self._received: dict[int, tuple[int, int]] = {}
        self._u2: tuple[int, ...] = ()
        self._u3: tuple[int, ...] = ()
        self._nbrs: frozenset[int] = frozenset()
        self._share_t = config.threshold
        self._aead_keys: dict[int, bytes] = {}

    def _advance(self, expected: int, name: str) -> None:
        if self._phase != expected:
            raise ConfigurationError(
                f"client {self.client_id}: {name} called out of order (at step {self._phase}, "
                f"expected {expected}); a client runs advertise, share_keys, masked_input, "
                "consistency, unmask once each"
            )

    def _sign(self, msg: Any) -> bytes:
        tag = hmac.new(self._mac, msg.signed_part(), "sha256").digest()
        return replace(msg, tag=tag).to_bytes(self.config.params_hash)

    def _raw(self, key: Any) -> bytes:
        return key.public_key().public_bytes_raw()

    def advertise(self) -> bytes:
        """Round 0: this client's fresh public keys, signed with its identity key."""
        self._advance(0, "advertise")
        self._phase = 1
        enc, mask = self._raw(self._enc), self._raw(self._mask)
        sig = self._identity.sign(advertise_payload(self.config.params_hash, self.round_id,
                                                    self.client_id, enc, mask))
        return wire.AdvertiseKeys(self.round_id, self.client_id, enc, mask, sig).to_bytes(
            self.config.params_hash)

    def share_keys(self, roster: bytes) -> bytes:
        """Round 1: encrypted Shamir shares of the seed and masking key for every roster member."""
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._advance(1, "share_keys")
        cfg = self.config
        msg = wire.Roster.from_bytes(roster, params_hash=cfg.params_hash,
                                     max_bytes=cfg.max_message_bytes())
        entries = {cid: (enc, mask) for cid, enc, mask, _ in msg.entries}
        if msg.round_id != self.round_id:
            raise SerializationError("roster is for another round; refusing it")
        if entries.get(self.client_id) != (self._raw(self._enc), self._raw(self._mask)):
            raise SerializationError(f"roster does not list client {self.client_id} with the "
                                     "keys it advertised; refusing it")
        if any(not 0 <= c < cfg.num_clients for c in entries):
            raise SerializationError(f"roster names client ids outside [0, {cfg.num_clients})")
        for cid, enc, mask, sig in msg.entries:
            if not self._directory.verify(cid, sig, advertise_payload(
                    cfg.params_hash, self.round_id, cid, enc, mask)):
                raise SerializationError(
                    f"roster entry of client {cid} is not signed by that client's identity key "
                    "(forged, substituted or unknown client); refusing the roster")
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
            key = hkdf(x25519(self._enc, enc_v), salt=self.round_id,
                       info=pair_info(b"veil-secagg-share-key", self.client_id, v))
            self._aead_keys[v] = key  # the same key decrypts v's shares for us in round 2
            nonce = os.urandom(12)
            plain = shamir.share_to_bytes(seed_sh[v + 1]) + shamir.share_to_bytes(key_sh[v + 1])
            cts[v] = nonce + ChaCha20Poly1305(key).encrypt(
                nonce, plain, share_ad(self.round_id, self.client_id, v))
        self._roster, self._nbrs, self._share_t = entries, nbrs, share_t
        self._roster_digest = roster_digest(msg.entries)
        self._own_shares = (seed_sh[self.client_id + 1], key_sh[self.client_id + 1])
        self._phase = 2
        return self._sign(wire.ShareKeys(self.round_id, self.client_id, cts))

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
        msg = wire.ShareDelivery.from_bytes(delivery, params_hash=cfg.params_hash,
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
                    blob[:12], blob[12:], share_ad(self.round_id, v, self.client_id))
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
        acc = ring_mask(acc, cfg.ring_bits)
        return self._sign(wire.MaskedInput(self.round_id, self.client_id, acc))

    def _pair_seed(self, private: Any, peer_public: bytes, peer: int) -> bytes:
        return hkdf(x25519(private, peer_public), salt=self.round_id,
                    info=pair_info(b"veil-secagg-pair", self.client_id, peer))

    def _consistency_payload(self, survivors: tuple[int, ...]) -> bytes:
        return consistency_payload(self.config.params_hash, self.round_id, self._roster_digest,
                                   survivors)

    def consistency(self, request: bytes) -> bytes:
        """Round 3: check the survivor list U3 against this client's view and sign it.

        Nothing secret is revealed here; the signature commits this client to one list."""
        self._advance(3, "consistency")
        cfg = self.config
        msg = wire.SurvivorList.from_bytes(request, params_hash=cfg.params_hash,
                                           max_bytes=cfg.max_message_bytes())
        if msg.round_id != self.round_id:
            raise SerializationError("survivor list is for another round")
        survivors = set(msg.survivors)
        if not survivors <= set(self._roster) or not (
                survivors & (self._nbrs | {self.client_id})) <= set(self._u2):
            raise SerializationError("survivor list names clients that never shared keys "
                                     f"with client {self.client_id}; refusing it")
        if self.client_id not in survivors:
            raise AggregationAborted(
                f"the server lists client {self.client_id} as dropped although it sent its "
                "masked input; revealing shares now could expose it, so it stops here"
            )
        if len(survivors) < cfg.threshold:
            raise AggregationAborted(f"only {len(survivors)} masked inputs arrived, below the "
                                     f"threshold {cfg.threshold}; refusing to go on")
        self._u3 = msg.survivors
        self._phase = 4  # signed once: a second (different) list is refused
        sig = self._identity.sign(self._consistency_payload(self._u3))
        return self._sign(wire.ConsistencySignature(self.round_id, self.client_id, sig))

    def unmask(self, request: bytes) -> bytes:
        """Round 4: after >= t valid signatures on the same U3, seed shares for survivors and
        key shares for dropped clients, never both."""
        self._advance(4, "unmask")
        cfg = self.config
        self._phase = 5  # answered (or refused) once, whatever happens below
        msg = wire.UnmaskRequest.from_bytes(request, params_hash=cfg.params_hash,
                                            max_bytes=cfg.max_message_bytes())
        if msg.round_id != self.round_id:
            raise SerializationError("unmask request is for another round")
        if msg.survivors != self._u3:
            raise AggregationAborted(
                f"the unmask request lists survivors {msg.survivors[:8]} but client "
                f"{self.client_id} signed {self._u3[:8]}: the server shows inconsistent views; "
                "no share is revealed")
        signers = [c for c, _ in msg.signatures]
        if not set(signers) <= set(self._u3):
            raise SerializationError("consistency signatures from clients outside the survivor "
                                     "list; refusing to unmask")
        payload = self._consistency_payload(self._u3)
        bad = [c for c, sig in msg.signatures if not self._directory.verify(c, sig, payload)]
        if bad:
            raise SerializationError(
                f"consistency signatures of clients {bad[:8]} do not verify over the survivor "
                f"list client {self.client_id} signed (forged, or signed over another list); "
                "no share is revealed")
        if len(signers) < cfg.threshold:
            raise AggregationAborted(
                f"only {len(signers)} clients signed the survivor list, below the threshold "
                f"{cfg.threshold}; client {self.client_id} reveals no share")
        survivors = set(self._u3)
        shares = dict(self._received)
        shares[self.client_id] = self._own_shares
        seed = {v: shamir.share_to_bytes(shares[v][0]) for v in self._u2 if v in survivors}
        keys = {v: shamir.share_to_bytes(shares[v][1]) for v in self._u2 if v not in survivors}
        return self._sign(wire.UnmaskShares(self.round_id, self.client_id, seed, keys))
