"""The server side of secure aggregation (:class:`SecAggServer`), exported by
:mod:`veil.protocols.secagg`; see :mod:`veil.protocols.secagg.client` for the protocol and what
the server learns.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from veil.errors import AggregationAborted, ConfigurationError, SerializationError
from veil.protocols import shamir
from veil.protocols.prg import SEED_BYTES, expand, hkdf, ring_dtype
from veil.protocols.secagg import messages as wire
from veil.protocols.secagg.common import (
    SecAggConfig,
    SecAggResult,
    mac_key,
    pair_info,
    ring_mask,
    x25519,
)
from veil.protocols.secagg.identity import (
    IdentityDirectory,
    advertise_payload,
    consistency_payload,
    roster_digest,
)

__all__ = ["SecAggServer", "drive_round"]


class SecAggServer:
    """The server's state for one round: collects messages, answers each round, unmasks the sum.

    ``receive_*`` methods take wire bytes from one client and raise
    :class:`~veil.errors.SerializationError` (leaving the state unchanged) for malformed,
    unauthenticated, replayed, duplicated or late messages; ``close_*`` methods end a round and
    raise :class:`~veil.errors.AggregationAborted` below the threshold.

    ``directory`` (optional) lets the server check identity signatures itself and reject bad
    ones early; the clients check them whatever the server does.
    """

    def __init__(self, config: SecAggConfig, *, round_id: bytes | None = None,
                 directory: IdentityDirectory | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self.config = config
        self._directory = directory
        self.round_id = round_id if round_id is not None else os.urandom(wire.ROUND_ID_BYTES)
        if len(self.round_id) != wire.ROUND_ID_BYTES:
            raise ConfigurationError(f"round_id must be {wire.ROUND_ID_BYTES} bytes")
        self._key = X25519PrivateKey.generate()
        self.public_key: bytes = self._key.public_key().public_bytes_raw()
        self._phase = 0
        self._adverts: dict[int, wire.AdvertiseKeys] = {}
        self._macs: dict[int, bytes] = {}
        self._shares: dict[int, wire.ShareKeys] = {}
        self._u1: tuple[int, ...] = ()
        self._u2: tuple[int, ...] = ()
        self._u3: tuple[int, ...] = ()
        self._graph: dict[int, frozenset[int]] = {}
        self._share_t = config.threshold
        self._acc: Any = None
        self._masked_from: set[int] = set()
        self._consistency: dict[int, bytes] = {}
        self._u4: tuple[int, ...] = ()
        self._roster_digest = b""
        self._unmask: dict[int, wire.UnmaskShares] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _expect(self, phase: int, what: str) -> None:
        if self._phase != phase:
            raise SerializationError(f"{what} arrived while the round is in {self._state()}; "
                                     "late or out-of-order messages are rejected")

    def _state(self) -> str:
        return ("advertise", "share", "masked", "consistency", "unmask",
                "finished")[min(self._phase, 5)]

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
            self._phase = 6
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
        msg = wire.AdvertiseKeys.from_bytes(data, params_hash=cfg.params_hash)
        self._check(msg, None, self._adverts)
        if not 0 <= msg.client_id < cfg.num_clients:
            raise SerializationError(f"client id {msg.client_id} outside [0, {cfg.num_clients})")
        known = {k for a in self._adverts.values() for k in (a.enc_public, a.mask_public)}
        if msg.enc_public in known or msg.mask_public in known or msg.enc_public == msg.mask_public:
            raise SerializationError(f"client {msg.client_id} advertised a reused public key")
        if self._directory is not None and not self._directory.verify(
                msg.client_id, msg.signature, advertise_payload(
                    cfg.params_hash, self.round_id, msg.client_id, msg.enc_public,
                    msg.mask_public)):
            raise SerializationError(f"advertise message of client {msg.client_id} is not "
                                     "signed by its identity key; rejected")
        mac = mac_key(x25519(self._key, msg.enc_public), self.round_id, msg.client_id)
        self._adverts[msg.client_id] = msg
        self._macs[msg.client_id] = mac

    def close_advertise(self) -> bytes:
        self._expect(0, "close_advertise")
        self._abort_below(len(self._adverts), "advertised keys")
        self._u1 = tuple(sorted(self._adverts))
        self._graph = self.config.graph(self._u1, self.round_id)
        self._share_t = self.config.share_threshold(len(self._u1))
        self._phase = 1
        entries = tuple((c, self._adverts[c].enc_public, self._adverts[c].mask_public,
                         self._adverts[c].signature) for c in self._u1)
        self._roster_digest = roster_digest(entries)
        return wire.Roster(self.round_id, entries).to_bytes(self.config.params_hash)

    # -- round 1 ---------------------------------------------------------------------------
    def receive_shares(self, data: bytes) -> None:
        self._expect(1, "a share message")
        cfg = self.config
        msg = wire.ShareKeys.from_bytes(data, params_hash=cfg.params_hash,
                                        max_bytes=cfg.max_message_bytes())
        self._check(msg, self._u1, self._shares)
        if set(msg.ciphertexts) != self._graph[msg.client_id]:
            raise SerializationError(f"client {msg.client_id} must send one share ciphertext "
                                     "to every neighbour (every other roster member in SecAgg)")
        self._shares[msg.client_id] = msg

    def close_shares(self) -> dict[int, bytes]:
        """End round 1; returns each client's delivery (ciphertexts addressed to it)."""
        self._expect(1, "close_shares")
        self._abort_below(len(self._shares), "shared their keys")
        self._u2 = tuple(sorted(self._shares))
        self._phase = 2
        self._acc = None
        return {v: wire.ShareDelivery(self.round_id, v, {u: self._shares[u].ciphertexts[v]
                                                         for u in self._u2 if u in self._graph[v]}
                                      ).to_bytes(self.config.params_hash)
                for v in self._u2}

    def _local_u2(self, u: int) -> set[int]:
        """Members of U2 whose shares client ``u`` holds (itself included)."""
        return (self._graph[u] & set(self._u2)) | {u}

    # -- round 2 ---------------------------------------------------------------------------
    def receive_masked(self, data: bytes) -> None:
        self._expect(2, "a masked input")
        cfg = self.config
        msg = wire.MaskedInput.from_bytes(data, params_hash=cfg.params_hash,
                                          max_bytes=cfg.max_message_bytes(),
                                          length=cfg.masked_length, dtype=ring_dtype(cfg.ring_bits))
        self._check(msg, self._u2, self._masked_from)
        if self._acc is None:
            self._acc = msg.vector.copy()
        else:
            self._acc += msg.vector
        self._masked_from.add(msg.client_id)

    def close_masked(self) -> bytes:
        """End round 2; returns the survivor list U3 that every survivor is asked to sign."""
        self._expect(2, "close_masked")
        self._abort_below(len(self._masked_from), "sent masked inputs")
        self._u3 = tuple(sorted(self._masked_from))
        self._phase = 3
        return wire.SurvivorList(self.round_id, self._u3).to_bytes(self.config.params_hash)

    # -- round 3: consistency check ----------------------------------------------------------
    def receive_consistency(self, data: bytes) -> None:
        self._expect(3, "a consistency signature")
        cfg = self.config
        msg = wire.ConsistencySignature.from_bytes(data, params_hash=cfg.params_hash)
        self._check(msg, self._u3, self._consistency)
        if self._directory is not None and not self._directory.verify(
                msg.client_id, msg.signature, consistency_payload(
                    cfg.params_hash, self.round_id, self._roster_digest, self._u3)):
            raise SerializationError(f"consistency signature of client {msg.client_id} does "
                                     "not verify over the survivor list; rejected")
        self._consistency[msg.client_id] = msg.signature

    def close_consistency(self) -> bytes:
        """End round 3; returns the unmask request: U3 and the signatures collected (U4)."""
        self._expect(3, "close_consistency")
        self._abort_below(len(self._consistency), "signed the survivor list")
        self._u4 = tuple(sorted(self._consistency))
        self._phase = 4
        sigs = tuple((c, self._consistency[c]) for c in self._u4)
        return wire.UnmaskRequest(self.round_id, self._u3, sigs).to_bytes(self.config.params_hash)

    # -- round 4 ---------------------------------------------------------------------------
    def receive_unmask(self, data: bytes) -> None:
        self._expect(4, "an unmask response")
        cfg = self.config
        msg = wire.UnmaskShares.from_bytes(data, params_hash=cfg.params_hash,
                                           max_bytes=cfg.max_message_bytes())
        self._check(msg, self._u4, self._unmask)
        local = self._local_u2(msg.client_id)
        # The server never holds a seed share and a key share of the same client.
        if (set(msg.seed_shares) != local & set(self._u3)
                or set(msg.key_shares) != local - set(self._u3)):
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

        self._expect(4, "finish")
        cfg = self.config
        self._abort_below(len(self._unmask), "answered the unmask request")
        share_t = self._share_t
        coeff_cache: dict[tuple[int, ...], dict[int, int]] = {}

        def secret(owner: int, seed_share: bool) -> bytes:
            holders = self._graph[owner] | {owner}
            helpers = tuple(sorted(h for h in self._unmask if h in holders)[:share_t])
            if len(helpers) < share_t:
                self._phase = 6
                self._acc = None
                raise AggregationAborted(
                    f"round aborted: only {len(helpers)} neighbours of client {owner} answered, "
                    f"below the share threshold {share_t}; nothing was revealed")
            if helpers not in coeff_cache:
                coeff_cache[helpers] = shamir.lagrange_at_zero([h + 1 for h in helpers])
            shares = {}
            for h in helpers:
                m = self._unmask[h]
                blob = (m.seed_shares if seed_share else m.key_shares)[owner]
                shares[h + 1] = shamir.share_from_bytes(blob)
            value = shamir.reconstruct(shares, threshold=share_t,
                                       coefficients=coeff_cache[helpers])
            if value >> (8 * SEED_BYTES):
                self._phase = 6
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
                self._phase = 6
                raise AggregationAborted(f"reconstructed masking key of client {v} does not "
                                         "match its advertised key; aborting")
            for u in sorted(self._graph[v] & set(self._u3)):
                pair = hkdf(x25519(key, self._adverts[u].mask_public), salt=self.round_id,
                            info=pair_info(b"veil-secagg-pair", u, v))
                mask = expand(pair, cfg.masked_length, ring_bits=cfg.ring_bits,
                              domain=b"veil-secagg-pair" + self.round_id)
                if u < v:
                    acc -= mask
                else:
                    acc += mask
        acc = ring_mask(acc, cfg.ring_bits)
        self._phase = 5
        self._acc = None
        q_total = acc[:-1].astype("uint64")
        total = cfg.quantizer.dequantize_sum(q_total, len(self._u3))
        n_adv = set(range(cfg.num_clients))
        dropped_by_phase = {
            "advertise": tuple(sorted(n_adv - set(self._u1))),
            "share": tuple(sorted(set(self._u1) - set(self._u2))),
            "masked": tuple(dropped),
            "consistency": tuple(sorted(set(self._u3) - set(self._u4))),
            "unmask": tuple(sorted(set(self._u4) - set(self._unmask))),
        }
        return SecAggResult(total=total, quantized_total=q_total, survivors=self._u3,
                            dropped=dropped_by_phase, clipped=int(acc[-1]))


# (phase, the server's receive method for its messages, the method that closes the phase)
_STEPS = (("advertise", "receive_advertise", "close_advertise"),
          ("share", "receive_shares", "close_shares"),
          ("masked", "receive_masked", "close_masked"),
          ("consistency", "receive_consistency", "close_consistency"),
          ("unmask", "receive_unmask", "finish"))


def drive_round(server: SecAggServer, clients: Sequence[int],
                send: Callable[[int, str, Any], bytes], *,
                dropouts: Mapping[str, Collection[int]],
                index: Callable[[int], int] | None = None,
                call: Callable[..., Any] | None = None) -> SecAggResult:
    """Run one round through ``server``, phase by phase (:data:`PHASES`), and return its result.

    ``send(client, phase, payload)`` hands ``payload`` to ``client`` and returns its reply: no
    payload (``None``) to advertise, then the roster, the client's own share delivery (taken
    from the server's deliveries at ``index(client)``, the client's position in the round;
    default the client id itself), the survivor list and the unmask request. A client listed in
    ``dropouts[phase]`` goes silent from that phase on. ``call(fn, *args)`` runs each server
    step (default: a plain call), e.g. to time the server.
    """
    call = call or (lambda fn, *args: fn(*args))
    index = index or (lambda c: c)
    alive = list(clients)
    payload: Any = None
    for phase, receive, close in _STEPS:
        alive = [c for c in alive if c not in dropouts.get(phase, ())]
        for c in alive:
            own = payload[index(c)] if phase == "masked" else payload
            call(getattr(server, receive), send(c, phase, own))
        payload = call(getattr(server, close))
    return payload
