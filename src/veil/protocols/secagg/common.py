"""Shared pieces of secure aggregation: the round configuration, the result, key derivation.

The configuration, result and phases are exported by :mod:`veil.protocols.secagg`; the key
helpers (``x25519``, ``pair_info``, ``mac_key``, ``ring_mask``, ``share_ad``) are internal to the
package (used by its client and server). See :mod:`veil.protocols.secagg.client` for the
protocol and what is revealed to whom.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.errors import ConfigurationError, InsecureParametersError, SerializationError
from veil.he.serialize import params_digest
from veil.protocols import shamir
from veil.protocols.prg import hkdf
from veil.protocols.secagg.quant import Quantizer

__all__ = ["PHASES", "SecAggConfig", "SecAggResult"]

PHASES = ("advertise", "share", "masked", "consistency", "unmask")
_U32 = struct.Struct(">I")
_MAX_CLIENTS = 1 << 16


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one aggregation round, known to the server and every client.

    ``threshold`` (t) defaults to ``num_clients // 2 + 1``; values ``<= num_clients / 2`` need
    ``allow_insecure=True``: the consistency round only stops a lying server if two survivor
    lists can never both collect t signatures from distinct clients, i.e. if ``2t > n`` (with
    ``c`` clients colluding with the server, ``2t > n + c``). Each client checks this against
    its *own* configuration; nothing the server sends changes it.
    ``ring_bits`` (k): masked vectors live in Z_{2**k}; quantization leaves room for the sum of
    ``num_clients`` updates, and the clip-count coordinate (at most ``vector_length`` per client)
    must not wrap either.

    ``neighbours`` (SecAgg+, Bell et al. 2020): 0 (default) is the complete graph of SecAgg, where
    every client shares keys and masks with every other one. An even ``k >= 2`` below
    ``num_clients - 1`` uses a k-regular ring (Harary) graph over the roster in a pseudo-random
    order keyed by the server's random round id: each client masks with and shares its secrets
    among its k neighbours only, with a per-neighbourhood threshold ``k // 2 + 1`` of the k + 1
    holders, so client cost is O(k) instead of O(n). The privacy guarantee then holds with high
    probability over the graph, for k of order log n and a minority of corrupt clients (see
    docs/security/aggregation.md).
    """

    num_clients: int
    vector_length: int
    clip: float
    threshold: int = 0
    ring_bits: int = 32
    allow_insecure: bool = field(default=False, kw_only=True)
    neighbours: int = field(default=0, kw_only=True)
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
        k = self.neighbours
        if not isinstance(k, int) or k < 0 or k % 2:
            raise ConfigurationError(f"neighbours must be 0 (complete graph) or an even number "
                                     f">= 2, got {k!r}")
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
        return params_digest({"protocol": "veil.secagg/2", **self.quantizer.describe(),
                              "num_clients": self.num_clients, "threshold": self.threshold,
                              "vector_length": self.vector_length,
                              "neighbours": self.neighbours})

    def sparse(self, roster_size: int) -> bool:
        return 0 < self.neighbours < roster_size - 1

    def share_threshold(self, roster_size: int) -> int:
        """Shares needed to rebuild one client's secrets (t, or k // 2 + 1 for SecAgg+)."""
        return self.neighbours // 2 + 1 if self.sparse(roster_size) else self.threshold

    def graph(self, roster: Sequence[int], round_id: bytes) -> dict[int, frozenset[int]]:
        """Each roster member's neighbours; the order is keyed by the (random) round id."""
        ids = sorted(roster)
        if not self.sparse(len(ids)):
            everyone = frozenset(ids)
            return {u: everyone - {u} for u in ids}
        order = sorted(ids, key=lambda c: hmac.new(round_id, b"veil-secagg-graph"
                                                   + _U32.pack(c), "sha256").digest())
        pos, m, half = {c: i for i, c in enumerate(order)}, len(order), self.neighbours // 2
        return {u: frozenset(order[(pos[u] + j) % m] for j in range(-half, half + 1) if j)
                for u in ids}

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


def x25519(private: Any, public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SerializationError(
            "X25519 key agreement failed (low-order or malformed public key); the peer's "
            "advertised key is invalid"
        ) from exc


def pair_info(label: bytes, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return label + _U32.pack(lo) + _U32.pack(hi)


def mac_key(shared: bytes, round_id: bytes, client_id: int) -> bytes:
    return hkdf(shared, salt=round_id, info=b"veil-secagg-mac" + _U32.pack(client_id))


def ring_mask(vec: Any, ring_bits: int) -> Any:
    if ring_bits < vec.dtype.itemsize * 8:
        vec &= vec.dtype.type((1 << ring_bits) - 1)
    return vec


def share_ad(round_id: bytes, sender: int, recipient: int) -> bytes:
    return b"veil-secagg-share" + round_id + _U32.pack(sender) + _U32.pack(recipient)
