"""The aggregation interface shared by every backend (:mod:`veil.fl.aggregation` for masking,
:mod:`veil.fl.he_backends` for Paillier and CKKS): what one aggregation returns and costs, the
abstract :class:`Aggregator`, and the input checks every backend runs before any party works.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from veil.errors import ConfigurationError
from veil.protocols.secagg import PHASES

__all__ = ["AggregationStats", "AggregationResult", "Aggregator", "check_updates",
           "check_dropouts"]


@dataclass(frozen=True)
class AggregationStats:
    """Cost of one aggregation. Seconds are wall-clock in this process (the simulation runs
    every party in turn); bytes are wire bytes, averaged over clients that took part."""

    client_seconds: float  # mean per client, all of its steps
    server_seconds: float  # everything the server (and key holder, if any) did per round
    bytes_sent_per_client: float
    bytes_received_per_client: float
    plain_bytes: int  # the update as float32, what plain FedAvg would send
    setup_seconds: float = 0.0  # one-off key generation by a key holder (HE backends)
    key_holder_seconds: float = 0.0  # part of server_seconds: the key holder's decryption

    @property
    def expansion(self) -> float:
        """Bytes a client sends relative to sending its plain float32 update."""
        return self.bytes_sent_per_client / self.plain_bytes


@dataclass(frozen=True)
class AggregationResult:
    """The aggregate of the survivors' updates and what it cost."""

    backend: str
    total: Any  # float64 vector: sum of the survivors' clipped (and quantized) updates
    survivors: tuple[int, ...]
    clipped: int  # values clipped, summed over survivors (individual counts stay hidden)
    stats: AggregationStats
    quantized_total: Any = None  # exact integer sum (masking / paillier backends)
    dropped: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def mean(self) -> Any:
        return self.total / len(self.survivors)


def check_updates(updates: Mapping[int, Any], num_clients: int, length: int) -> dict[int, Any]:
    """``updates`` as float64 vectors of ``length``, one for every client id 0..n-1."""
    import numpy as np

    if set(updates) != set(range(num_clients)):
        raise ConfigurationError(
            f"updates must map every client id 0..{num_clients - 1} to a vector; got ids "
            f"{sorted(updates)[:10]}"
        )
    out = {}
    for cid, vec in updates.items():
        arr = np.asarray(vec, dtype=np.float64).reshape(-1)
        if arr.size != length:
            raise ConfigurationError(f"client {cid}'s update has {arr.size} values, expected "
                                     f"{length}")
        out[cid] = arr
    return out


def check_dropouts(dropouts: Mapping[str, Collection[int]] | None,
                   num_clients: int) -> dict[str, set[int]]:
    """``dropouts`` as ``{phase: client ids}`` for every phase of :data:`PHASES`."""
    drops = {p: set() for p in PHASES}
    for phase, ids in (dropouts or {}).items():
        if phase not in drops:
            raise ConfigurationError(f"unknown dropout phase {phase!r}; use one of {PHASES}")
        bad = [c for c in ids if not 0 <= c < num_clients]
        if bad:
            raise ConfigurationError(f"dropout ids {bad} are not clients of this round")
        drops[phase] = set(ids)
    return drops


class Aggregator(ABC):
    """Sums one vector per client; ``aggregate`` simulates every party in this process."""

    backend: ClassVar[str]
    num_clients: int
    vector_length: int
    clip: float
    threshold: int

    @abstractmethod
    def aggregate(self, updates: Mapping[int, Any], *,
                  dropouts: Mapping[str, Collection[int]] | None = None) -> AggregationResult:
        """Aggregate ``updates`` ({client id: vector}) with the given dropouts."""
