"""Client-side checks of federated averaging (:mod:`veil.fl.fedavg`): what a client
derives from its *own* configuration, and the identities handed to it at start.

A client never takes its SecAgg threshold, clip range or DP parameters from the server's header:
:func:`round_params` computes them from the client's :class:`~.fedavg.FedAvgConfig`, and
:func:`client_participants` checks the server's participant list against it.
"""

from __future__ import annotations

import math
from typing import Any

from veil.errors import AggregationAborted, SerializationError

__all__ = ["client_participants", "identities", "round_params"]


def round_params(cfg: Any, m: int) -> tuple[int, float]:
    """SecAgg threshold and clip range of a round with ``m`` participants, from ``cfg`` alone
    (the server and every client compute them independently)."""
    threshold = cfg.threshold or m // 2 + 1
    clip = cfg.clip
    if cfg.dp is not None:
        clip = max(clip, cfg.dp.l2_clip + 8 * cfg.dp.noise_multiplier * cfg.dp.l2_clip
                   / math.sqrt(max(1, threshold - 1)))
    return threshold, clip


def client_participants(cfg: Any, cid: int, claimed: Any) -> list[int]:
    """Check the server's participant list against the client's own configuration."""
    n = cfg.num_clients
    if (not isinstance(claimed, list) or not all(type(c) is int for c in claimed)
            or len(set(claimed)) != len(claimed) or not all(0 <= c < n for c in claimed)):
        raise SerializationError(f"participant list must be distinct client ids in [0, {n})")
    if cid not in claimed:
        raise SerializationError(f"participant list does not name client {cid}")
    sampling = cfg.dp is not None and cfg.dp.sample_rate < 1
    if not sampling and sorted(claimed) != list(range(n)):
        raise SerializationError(
            f"the server names {len(claimed)} of {n} participants, but this client's "
            "configuration has no client sampling: every client takes part in every round")
    if len(claimed) < 2:
        raise AggregationAborted("fewer than 2 participants in this round; nothing is sent")
    return claimed


def identities(n: int) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Each client's Ed25519 identity key (raw) and the directory of public keys: the
    out-of-band PKI of this simulation, handed to each client at process start."""
    from cryptography.hazmat.primitives import serialization

    from veil.protocols.secagg import generate_identities

    private, directory = generate_identities(range(n))
    raw = {c: k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption()) for c, k in private.items()}
    return raw, dict(directory.keys)
