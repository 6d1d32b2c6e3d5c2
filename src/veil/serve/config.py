"""Server settings: limits, deadlines, queue and worker counts, checked once at construction."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from veil.errors import ConfigurationError
from veil.protocols.inference import PublicPlan

__all__ = ["ServerConfig", "MiB"]

MiB = 1024 * 1024


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServerConfig:
    """Limits and resources of a :func:`veil.serve.create_app` server.

    Every limit is enforced *before* the corresponding bytes are parsed: ``Content-Length`` is
    checked against the limit first, and the streamed body is counted as it arrives, so an
    oversized or lying upload is cut off at the limit and never reaches TenSEAL. Bodies stream
    to files in the store directory, so queued requests cost disk, not memory; only the
    ``workers`` requests being evaluated are in memory.

    ``workers`` processes evaluate the model (TenSEAL holds the GIL, so threads would not run in
    parallel); each caches up to ``contexts_per_worker`` loaded public contexts by their SHA-256.
    At most ``workers + queue_size`` evaluations are admitted at once; beyond that the server
    answers 503 with ``Retry-After: retry_after_s``. ``body_timeout_s`` bounds how long a client
    may take to send a body (slow senders get 408); ``request_deadline_s`` (predictions) and
    ``context_deadline_s`` (context checks) then bound the time from the complete body to the
    answer, queueing included (504 after it; a worker skips a request whose deadline passed).
    ``max_contexts`` bounds the on-disk context store. Contexts are owned by the client that
    uploaded them (its token's name when ``token_secret`` is set, else its address): each
    client stores at most ``contexts_per_client`` (its own
    least recently used one makes room), and a full store refuses new uploads (507) unless a
    context has gone unused for ``context_idle_s``; no client can evict another's context.
    An uploaded context must match the model's plan, and at most
    ``min(max_context_bytes, veil.serve.store.context_size_limit(plan))`` bytes are read.
    Bodies are read *before* an admission slot is taken; a client may send at most
    ``bodies_per_client`` bodies at once (429 beyond), so slow senders hold no slots.
    """

    max_context_bytes: int = 256 * MiB
    max_request_bytes: int | None = None  # None: derived from the model (request_limit_for)
    max_ciphertexts: int = 512
    workers: int = field(default_factory=_default_workers)
    queue_size: int = 32
    request_deadline_s: float = 120.0
    context_deadline_s: float = 120.0
    body_timeout_s: float = 60.0
    retry_after_s: int = 1
    contexts_per_worker: int = 4
    max_contexts: int = 64
    contexts_per_client: int = 4
    context_idle_s: float = 3600.0
    bodies_per_client: int = 4
    store_dir: Path | None = None
    # 32 bytes: API tokens required (veil.serve.auth); contexts are then owned by token name
    token_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ints = {
            "max_context_bytes": self.max_context_bytes,
            "max_request_bytes": 1 if self.max_request_bytes is None else self.max_request_bytes,
            "max_ciphertexts": self.max_ciphertexts,
            "workers": self.workers,
            "retry_after_s": self.retry_after_s,
            "contexts_per_worker": self.contexts_per_worker,
            "max_contexts": self.max_contexts,
            "contexts_per_client": self.contexts_per_client,
            "bodies_per_client": self.bodies_per_client,
        }
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"ServerConfig.{name} must be a positive integer, got {value!r}"
                )
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or (
            self.queue_size < 0
        ):
            raise ConfigurationError(
                f"ServerConfig.queue_size must be an integer >= 0, got {self.queue_size!r}"
            )
        for name in ("request_deadline_s", "context_deadline_s", "body_timeout_s",
                     "context_idle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value < 24 * 3600
            ):
                raise ConfigurationError(
                    f"ServerConfig.{name} must be a number of seconds in (0, 86400), "
                    f"got {value!r}"
                )
        if self.token_secret is not None and (
            not isinstance(self.token_secret, bytes) or len(self.token_secret) != 32
        ):
            raise ConfigurationError("ServerConfig.token_secret must be 32 bytes (load it with "
                                     "veil.serve.auth.load_secret)")
        if self.store_dir is not None and not isinstance(self.store_dir, Path):
            object.__setattr__(self, "store_dir", Path(self.store_dir))

    def request_limit(self, plan: PublicPlan) -> int:
        """``max_request_bytes``, or when unset the size of one full request for this model.

        A fresh ciphertext takes at most ``2 * N * (primes - 1) * 8`` bytes; a ``batched``
        request holds one per input feature (one batch of up to ``slots`` rows), a ``single``
        one a few (packed layout: ``input_encoding["ciphertexts"]``). The default allows that
        with 25 % slack, and never less than 32 MiB.
        """
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        params = plan.params
        ct = 2 * params["poly_modulus_degree"] * (len(params["coeff_mod_bit_sizes"]) - 1) * 8
        count = 1
        for d in plan.input_shape:
            count *= int(d)
        if plan.layout != "batched":  # a few segments; the packed layout says how many
            count = max(4, int(plan.input_encoding.get("ciphertexts", 0)))
        return max(32 * MiB, int(1.25 * count * ct) + MiB)

    @property
    def max_in_flight(self) -> int:
        """Evaluations admitted at once (running plus queued)."""
        return self.workers + self.queue_size
