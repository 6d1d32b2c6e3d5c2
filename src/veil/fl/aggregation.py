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
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from veil.errors import AggregationAborted, ConfigurationError
from veil.fl.base import (
    AggregationResult,
    AggregationStats,
    Aggregator,
    check_dropouts,
    check_updates,
)
from veil.protocols.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    drive_round,
    generate_identities,
)

__all__ = ["MaskingAggregator", "make_aggregator", "secure_sum", "BACKENDS"]


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
        vecs = check_updates(updates, cfg.num_clients, cfg.vector_length)
        drops = check_dropouts(dropouts, cfg.num_clients)
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
        clients = {c: SecAggClient(c, cfg, round_id=server.round_id,
                                   server_public_key=server.public_key,
                                   identity_key=self._identities[c], directory=self.directory)
                   for c in sorted(vecs)}

        def send(cid: int, phase: str, payload: Any) -> bytes:
            client = clients[cid]
            if phase == "advertise":
                return on_client(cid, client.advertise)
            recv[cid] += len(payload)
            if phase == "masked":
                return on_client(cid, client.masked_input, vecs[cid], payload)
            step = {"share": client.share_keys, "consistency": client.consistency,
                    "unmask": client.unmask}[phase]
            return on_client(cid, step, payload)

        res = drive_round(server, sorted(vecs), send, dropouts=drops, call=on_server)
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
