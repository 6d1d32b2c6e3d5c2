"""Secure aggregation of client updates behind one interface, three backends.

``masking`` (default)
    SecAgg pairwise + self masks with Shamir-shared recovery (:mod:`veil.protocols.secagg`).
    No key holder; the server learns only the sum of the >= ``threshold`` surviving updates.
``paillier``
    Clients encrypt under a key holder's Paillier key (``veil.he``), the server adds
    ciphertexts, the key holder decrypts only the sum. The key holder must not collude with the
    server (it could decrypt individual ciphertexts).
``ckks``
    Clients encrypt under a shared CKKS public context, the server adds, the secret-key holder
    decrypts the sum with noise flooding (``shared=True``). Same trust assumption as Paillier;
    the result is approximate.

Every backend clips each coordinate to ``[-clip, clip]`` and *counts* the clipped values (the
count is aggregated like the data, so only the total is revealed), and aborts with
:class:`~veil.errors.AggregationAborted` when fewer than ``threshold`` clients survive, so an
aggregate never exposes a lone update.

``dropouts`` maps a phase name (:data:`veil.protocols.secagg.PHASES`: ``advertise``, ``share``,
``masked``, ``consistency``, ``unmask``) to the clients that go silent *before* sending that
phase's message; the HE backends have a single submission, so any listed client simply never
submits.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from veil.errors import AggregationAborted, ConfigurationError
from veil.protocols.secagg import (
    PHASES,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    generate_identities,
)

__all__ = [  # PaillierAggregator and CKKSAggregator also resolve here, lazily
    "AggregationStats",
    "AggregationResult",
    "Aggregator",
    "MaskingAggregator",
    "make_aggregator",
    "secure_sum",
    "BACKENDS",
]


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


def _check_updates(updates: Mapping[int, Any], num_clients: int, length: int) -> dict[int, Any]:
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


def _check_dropouts(dropouts: Mapping[str, Collection[int]] | None,
                    num_clients: int) -> dict[str, set[int]]:
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


class MaskingAggregator(Aggregator):
    """SecAgg masking (no key holder); ``neighbours=k`` selects SecAgg+ (sparse graph).
    See :mod:`veil.protocols.secagg`.

    The simulated clients get long-term Ed25519 identities when the aggregator is built (one
    per client, reused across ``aggregate`` calls); each client receives the identity directory
    and its configuration directly, never through the simulated server."""

    backend: ClassVar[str] = "masking"

    def __init__(self, *, num_clients: int, vector_length: int, clip: float, threshold: int = 0,
                 ring_bits: int = 32, neighbours: int = 0, allow_insecure: bool = False) -> None:
        self.config = SecAggConfig(num_clients, vector_length, clip, threshold, ring_bits,
                                   allow_insecure=allow_insecure, neighbours=neighbours)
        self.num_clients, self.vector_length = num_clients, vector_length
        self.clip, self.threshold = float(clip), self.config.threshold
        self._identities, self.directory = generate_identities(range(num_clients))

    def aggregate(self, updates: Mapping[int, Any], *,
                  dropouts: Mapping[str, Collection[int]] | None = None) -> AggregationResult:
        cfg = self.config
        vecs = _check_updates(updates, cfg.num_clients, cfg.vector_length)
        drops = _check_dropouts(dropouts, cfg.num_clients)
        for v in vecs.values():  # reject bad input before any party does work
            cfg.quantizer.quantize(v)
        client_t = dict.fromkeys(vecs, 0.0)
        sent = dict.fromkeys(vecs, 0)
        recv = dict.fromkeys(vecs, 0)
        server_t = 0.0

        def on_client(cid: int, fn: Any, *args: Any) -> bytes:
            t0 = time.perf_counter()
            out = fn(*args)
            client_t[cid] += time.perf_counter() - t0
            sent[cid] += len(out)
            return out

        def on_server(fn: Any, *args: Any) -> Any:
            nonlocal server_t
            t0 = time.perf_counter()
            out = fn(*args)
            server_t += time.perf_counter() - t0
            return out

        server = on_server(lambda: SecAggServer(cfg, directory=self.directory))
        alive = sorted(vecs)
        clients = {c: SecAggClient(c, cfg, round_id=server.round_id,
                                   server_public_key=server.public_key,
                                   identity_key=self._identities[c], directory=self.directory)
                   for c in alive}

        def step(phase: str) -> list[int]:
            return [c for c in alive if c not in drops[phase]]

        alive = step("advertise")
        for c in alive:
            on_server(server.receive_advertise, on_client(c, clients[c].advertise))
        roster = on_server(server.close_advertise)
        alive = step("share")
        for c in alive:
            recv[c] += len(roster)
            on_server(server.receive_shares, on_client(c, clients[c].share_keys, roster))
        deliveries = on_server(server.close_shares)
        alive = step("masked")
        for c in alive:
            recv[c] += len(deliveries[c])
            msg = on_client(c, clients[c].masked_input, vecs[c], deliveries[c])
            on_server(server.receive_masked, msg)
        survivors = on_server(server.close_masked)
        alive = step("consistency")
        for c in alive:
            recv[c] += len(survivors)
            on_server(server.receive_consistency,
                      on_client(c, clients[c].consistency, survivors))
        request = on_server(server.close_consistency)
        alive = step("unmask")
        for c in alive:
            recv[c] += len(request)
            on_server(server.receive_unmask, on_client(c, clients[c].unmask, request))
        res = on_server(server.finish)
        took_part = [c for c in vecs if sent[c]]
        stats = AggregationStats(
            client_seconds=sum(client_t[c] for c in took_part) / len(took_part),
            server_seconds=server_t,
            bytes_sent_per_client=sum(sent[c] for c in res.survivors) / len(res.survivors),
            bytes_received_per_client=sum(recv[c] for c in res.survivors) / len(res.survivors),
            plain_bytes=4 * cfg.vector_length,
        )
        return AggregationResult(self.backend, res.total, res.survivors, res.clipped, stats,
                                 quantized_total=res.quantized_total, dropped=res.dropped)


BACKENDS: dict[str, str] = {
    "masking": "veil.fl.aggregation:MaskingAggregator",
    "paillier": "veil.fl.he_backends:PaillierAggregator",
    "ckks": "veil.fl.he_backends:CKKSAggregator",
}


def make_aggregator(backend: str = "masking", **options: Any) -> Aggregator:
    """Build the aggregator for ``backend`` (see :data:`BACKENDS`) with keyword ``options``."""
    import importlib

    target = BACKENDS.get(backend)
    if target is None:
        raise ConfigurationError(f"unknown aggregation backend {backend!r}; use one of "
                                 f"{sorted(BACKENDS)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(**options)


def secure_sum(updates: Mapping[int, Any], *, clip: float, backend: str = "masking",
               threshold: int = 0, dropouts: Mapping[str, Collection[int]] | None = None,
               **options: Any) -> AggregationResult:
    """One-call secure sum of ``updates`` ({client id 0..n-1: vector}); see the module doc."""
    if not updates:
        raise AggregationAborted("no updates to aggregate")
    import numpy as np

    length = int(np.asarray(next(iter(updates.values()))).size)
    agg = make_aggregator(backend, num_clients=len(updates), vector_length=length, clip=clip,
                          threshold=threshold, **options)
    return agg.aggregate(updates, dropouts=dropouts)


def __getattr__(name: str) -> Any:
    """``PaillierAggregator`` / ``CKKSAggregator`` load on first use (they pull in ``veil.he``)."""
    for target in BACKENDS.values():
        module, attr = target.split(":")
        if attr == name and module != __name__:
            import importlib

            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
