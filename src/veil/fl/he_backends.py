"""Homomorphic-encryption aggregation backends (Paillier, CKKS) behind the masking interface.

Parties: a **key holder** (generates the key pair and decrypts only the final sum), the
**clients** (encrypt their clipped update under the public key) and the **server** (adds the
ciphertexts; it never holds the secret key). Every message crosses the simulated wire as a Veil
envelope and is parsed with a size limit on the receiving side.

What is revealed to whom: the server sees ciphertexts only; the key holder sees the sum of the
>= ``threshold`` submitted updates (and the total clip count). If the key holder and the server
collude they can decrypt individual updates: unlike masking, these backends need a key holder
trusted not to collude (or a threshold-decryption setup, which Veil does not provide).

Paillier quantizes with the same :class:`~veil.protocols.secagg.quant.Quantizer` as masking (so
its sum is the exact integer sum of the quantized updates) and packs many values per ciphertext
(``encrypt_packed``). CKKS encrypts the clipped floats and decrypts with noise flooding
(``shared=True``), so its sum is approximate.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from veil.errors import AggregationAborted, ConfigurationError, InsecureParametersError
from veil.fl.base import (
    AggregationResult,
    AggregationStats,
    Aggregator,
    check_dropouts,
    check_updates,
)
from veil.protocols.secagg.quant import Quantizer

__all__ = ["PaillierAggregator", "CKKSAggregator"]


class _HEAggregator(Aggregator):
    def __init__(self, *, num_clients: int, vector_length: int, clip: float, threshold: int = 0,
                 allow_insecure: bool = False) -> None:
        if not isinstance(num_clients, int) or num_clients < 2:
            raise ConfigurationError(f"num_clients must be an integer >= 2, got {num_clients!r}")
        t = threshold or num_clients // 2 + 1
        if not 1 <= t <= num_clients:
            raise ConfigurationError(f"threshold must be in [1, {num_clients}], got {t}")
        if t < 2 and not allow_insecure:
            raise InsecureParametersError(
                "a threshold of 1 lets the key holder decrypt a single client's update; use "
                "threshold >= 2 or pass allow_insecure=True")
        self.num_clients, self.vector_length = num_clients, vector_length
        self.clip, self.threshold = float(clip), t
        self.quantizer = Quantizer(clip=float(clip), max_addends=num_clients, ring_bits=32)
        self.allow_insecure = allow_insecure
        self._keys: Any = None

    def aggregate(self, updates: Mapping[int, Any], *,
                  dropouts: Mapping[str, Collection[int]] | None = None) -> AggregationResult:
        vecs = check_updates(updates, self.num_clients, self.vector_length)
        drops = check_dropouts(dropouts, self.num_clients)
        silent = set().union(*drops.values())
        encoded = {c: self._encode(v) for c, v in vecs.items()}  # validates all input first
        t0 = time.perf_counter()
        key_blob = self._key_holder_setup()
        setup_t = time.perf_counter() - t0
        submitters = [c for c in sorted(vecs) if c not in silent]
        client_t, sent = {}, {}
        blobs = []
        for c in submitters:
            t0 = time.perf_counter()
            blob = self._client_encrypt(key_blob, encoded[c])
            client_t[c], sent[c] = time.perf_counter() - t0, len(blob)
            blobs.append(blob)
        if len(submitters) < self.threshold:
            raise AggregationAborted(
                f"round aborted: only {len(submitters)} clients submitted, below the threshold "
                f"{self.threshold}; nothing was decrypted")
        t0 = time.perf_counter()
        sum_blob = self._server_add(key_blob, blobs)
        server_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        total, q_total, clipped = self._key_holder_decrypt(sum_blob, len(submitters))
        keyholder_t = time.perf_counter() - t0
        stats = AggregationStats(
            client_seconds=sum(client_t.values()) / len(client_t),
            server_seconds=server_t + keyholder_t,
            key_holder_seconds=keyholder_t,
            bytes_sent_per_client=sum(sent.values()) / len(sent),
            bytes_received_per_client=float(len(key_blob)),
            plain_bytes=4 * self.vector_length,
            setup_seconds=setup_t,
        )
        dropped = {p: tuple(sorted(ids)) for p, ids in drops.items()}
        return AggregationResult(self.backend, total, tuple(submitters), clipped, stats,
                                 quantized_total=q_total, dropped=dropped)

    # backend hooks: each runs as one party and exchanges only bytes with the others
    @abstractmethod
    def _encode(self, v: Any) -> Any:
        """Client: clip (and quantize) one update, append its clip count."""

    @abstractmethod
    def _key_holder_setup(self) -> bytes:
        """Key holder: generate keys, return the serialized public key."""

    @abstractmethod
    def _client_encrypt(self, key_blob: bytes, encoded: Any) -> bytes:
        """Client: encrypt under the public key."""

    @abstractmethod
    def _server_add(self, key_blob: bytes, blobs: list[bytes]) -> bytes:
        """Server: parse and add the submissions."""

    @abstractmethod
    def _key_holder_decrypt(self, blob: bytes, count: int) -> tuple[Any, Any, int]:
        """Key holder: decrypt the sum of ``count`` submissions."""


class PaillierAggregator(_HEAggregator):
    """Packed Paillier: exact integer sum of the quantized updates (3072-bit key by default)."""

    backend: ClassVar[str] = "paillier"

    def __init__(self, *, num_clients: int, vector_length: int, clip: float, threshold: int = 0,
                 key_bits: int = 3072, allow_insecure: bool = False) -> None:
        super().__init__(num_clients=num_clients, vector_length=vector_length, clip=clip,
                         threshold=threshold, allow_insecure=allow_insecure)
        self.key_bits = key_bits
        half = self.quantizer.levels // 2
        self._half = half
        self._max_abs = float(max(self.quantizer.levels - half, vector_length))

    def _encode(self, v: Any) -> Any:
        import numpy as np

        q, clipped = self.quantizer.quantize(v)
        out = np.empty(q.size + 1, dtype=np.int64)
        out[:-1] = q.astype(np.int64) - self._half  # centred: fewer bits per slot
        out[-1] = clipped
        return out

    def _key_holder_setup(self) -> bytes:
        from veil.he import PaillierKeyPair

        self._keys = PaillierKeyPair.generate(self.key_bits, allow_insecure=self.allow_insecure)
        return self._keys.public_key.serialize()

    def _client_encrypt(self, key_blob: bytes, encoded: Any) -> bytes:
        from veil.he import PaillierPublicKey

        pk = PaillierPublicKey.load(key_blob, allow_insecure=self.allow_insecure)
        vec = pk.encrypt_packed(encoded, precision_bits=0, max_addends=self.num_clients,
                                max_abs=self._max_abs)
        return vec.serialize()

    def _server_add(self, key_blob: bytes, blobs: list[bytes]) -> bytes:
        from veil.he import PackedPaillierVector, PaillierPublicKey

        pk = PaillierPublicKey.load(key_blob, allow_insecure=self.allow_insecure)
        limit = 2 * len(blobs[0]) + 4096
        total = None
        for blob in blobs:
            v = PackedPaillierVector.load(blob, pk, max_bytes=limit)
            if v.size != self.vector_length + 1 or v.addends != 1:
                raise ConfigurationError(f"a submission holds {v.size} values / {v.addends} "
                                         "addends; expected one fresh update")
            total = v if total is None else total + v
        # No re-randomization: the server adds no plaintext of its own, and the randomness of a
        # sum of fresh ciphertexts is the product of the clients' randomness, which tells the
        # key holder nothing about the individual plaintexts.
        return total.serialize(rerandomize=False)

    def _key_holder_decrypt(self, blob: bytes, count: int) -> tuple[Any, Any, int]:
        import numpy as np

        from veil.he import PackedPaillierVector

        v = PackedPaillierVector.load(blob, self._keys.public_key)
        if v.addends != count:
            raise AggregationAborted(f"the server's sum has {v.addends} addends, not {count}")
        plain = np.asarray(self._keys.decrypt(v)).astype(np.int64).reshape(-1)
        q_total = (plain[:-1] + count * self._half).astype(np.uint64)
        return self.quantizer.dequantize_sum(q_total, count), q_total, int(plain[-1])


class CKKSAggregator(_HEAggregator):
    """CKKS (TenSEAL): approximate sum, decrypted with noise flooding (``shared=True``)."""

    backend: ClassVar[str] = "ckks"

    def __init__(self, *, num_clients: int, vector_length: int, clip: float, threshold: int = 0,
                 statistical_security: int = 40, allow_insecure: bool = False) -> None:
        super().__init__(num_clients=num_clients, vector_length=vector_length, clip=clip,
                         threshold=threshold, allow_insecure=allow_insecure)
        self.statistical_security = statistical_security

    def _encode(self, v: Any) -> Any:
        import numpy as np

        x = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ConfigurationError(f"update contains {bad} NaN/infinite values; aggregation "
                                     "sums finite numbers only (check the local training step)")
        clipped = int(np.count_nonzero(np.abs(x) > self.clip))
        return np.append(np.clip(x, -self.clip, self.clip), float(clipped))

    def _key_holder_setup(self) -> bytes:
        from veil.he import CKKSContext, CKKSParams

        self._keys = CKKSContext.generate(CKKSParams.for_depth(0), galois_keys=False)
        return self._keys.public().serialize()

    def _client_encrypt(self, key_blob: bytes, encoded: Any) -> bytes:
        from veil.he import CKKSContext

        ctx = CKKSContext.load(key_blob)
        bound = max(self.clip, float(self.vector_length))
        return ctx.encrypt(encoded, value_bound=bound).serialize()

    def _server_add(self, key_blob: bytes, blobs: list[bytes]) -> bytes:
        from veil.he import CKKSContext

        ctx = CKKSContext.load(key_blob)
        limit = 2 * len(blobs[0]) + 4096
        total = None
        for blob in blobs:
            t = ctx.load_tensor(blob, max_bytes=limit)
            if t.size != self.vector_length + 1:
                raise ConfigurationError(f"a submission holds {t.size} values, expected "
                                         f"{self.vector_length + 1}")
            total = t if total is None else total + t
        return total.serialize()

    def _key_holder_decrypt(self, blob: bytes, count: int) -> tuple[Any, Any, int]:
        import numpy as np

        t = self._keys.load_tensor(blob)
        out = np.asarray(self._keys.decrypt(t, shared=True,
                                            statistical_security=self.statistical_security))
        out = out.reshape(-1)
        return out[:-1], None, int(max(0, round(float(out[-1]))))
