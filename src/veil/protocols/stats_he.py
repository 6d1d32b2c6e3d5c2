"""Additive-HE kernels for joint statistics: data owners, an aggregator and a key holder.

Roles and what each learns (semi-honest, aggregator and key holder do not collude):

* **key holder** generates the key pair (Paillier, or a CKKS context), sends the public key /
  public context, and later decrypts exactly one ciphertext: the aggregate. It learns the summed
  sufficient statistics (row count, column sums, sums of products, histogram counts) — slightly
  more than a lone mean or correlation, since the final statistics are computed from them.
* **data owner** (one per dataset) computes its own sufficient statistics locally, encrypts them
  under the public key and sends them to the aggregator. It learns nothing.
* **aggregator** holds no secret key; it adds the owners' ciphertexts (and, for a DP release,
  its own encrypted noise) and forwards one ciphertext to the key holder. It learns the message
  sizes only.

Every message crosses the "wire" as bytes from ``serialize()`` and is loaded with the receiving
role's own key object; :class:`Wire` records who sent how many bytes to whom.

CKKS specifics: each value travels as two slots, ``hi * 2**24 + lo`` with ``hi`` an integer, so
sums up to about 2^48 keep CKKS's absolute precision (~1e-5) instead of being limited by its
2^29 range; ``round(hi)`` is exact. The key holder's decryption is *not* noise-flooded by
default: the results are meant for the key holder. Flooding (``flood=True``) is refused for now:
the noise needed (``CKKSContext.decrypt(shared=True)``) lands on the ``hi`` limb and is multiplied
by 2^24, which destroys the result. When decrypted values go to a party that saw the ciphertexts
(the aggregator; Li–Micciancio key recovery), use ``backend="paillier"``, which is exact and has no
decryption-error leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, UnsupportedOperationError

__all__ = ["Wire", "KeyHolder", "Aggregator", "owner_message", "PAILLIER_FRAC_BITS",
           "CKKS_LIMB_BITS"]

PAILLIER_FRAC_BITS = 32
PAILLIER_MAX_ABS = 2.0**62
CKKS_LIMB_BITS = 24
_CKKS_PRECISION, _CKKS_INTEGER = 30, 29


@dataclass
class Wire:
    """Bytes that crossed between roles: (sender, receiver, what, bytes)."""

    messages: list[tuple[str, str, str, int]] = field(default_factory=list)

    def send(self, sender: str, receiver: str, what: str, payload: bytes) -> bytes:
        if not isinstance(payload, (bytes, bytearray)):
            raise ConfigurationError(f"{what}: only bytes may cross the wire")
        self.messages.append((sender, receiver, what, len(payload)))
        return bytes(payload)

    @property
    def total_bytes(self) -> int:
        return sum(m[3] for m in self.messages)

    def bytes_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sender, _r, _w, n in self.messages:
            out[sender] = out.get(sender, 0) + n
        return out


def _he() -> Any:
    from veil import he

    return he


def _ckks_params() -> Any:
    return _he().CKKSParams.for_depth(0, precision_bits=_CKKS_PRECISION,
                                      integer_bits=_CKKS_INTEGER)


def _limbs(values: np.ndarray) -> np.ndarray:
    hi = np.floor(values / 2.0**CKKS_LIMB_BITS)
    lo = values - hi * 2.0**CKKS_LIMB_BITS
    if np.any(np.abs(hi) >= 2.0**CKKS_LIMB_BITS):
        raise ConfigurationError(
            f"a sufficient statistic of magnitude {float(np.abs(values).max()):g} exceeds the "
            f"CKKS backend's range (2^{2 * CKKS_LIMB_BITS}); rescale the data or use "
            "backend='paillier'")
    return np.concatenate([hi, lo])


def _unlimb(values: np.ndarray) -> np.ndarray:
    half = values.size // 2
    return np.rint(values[:half]) * 2.0**CKKS_LIMB_BITS + values[half:]


class KeyHolder:
    """Generates the keys; decrypts only the final aggregate."""

    def __init__(self, backend: str, *, paillier_bits: int = 3072,
                 allow_insecure: bool = False) -> None:
        he = _he()
        self.backend = backend
        if backend == "paillier":
            self._keys = he.PaillierKeyPair.generate(paillier_bits, allow_insecure=allow_insecure)
        elif backend == "ckks":
            self._ctx = he.CKKSContext.generate(_ckks_params(), galois_keys=False)
        else:
            raise ConfigurationError(f"KeyHolder backend must be 'paillier' or 'ckks', got "
                                     f"{backend!r}")
        self._opened = False

    def public_message(self) -> bytes:
        if self.backend == "paillier":
            return self._keys.public_key.serialize()
        return self._ctx.public().serialize()

    def open(self, aggregate: bytes, *, flood: bool = False) -> np.ndarray:
        """Decrypt the aggregate (once per key holder: a second call raises)."""
        if self._opened:
            raise ConfigurationError(
                "this key holder already decrypted its aggregate; use a fresh key per release")
        self._opened = True
        if self.backend == "paillier":
            vec = _he().PaillierVector.load(aggregate, self._keys.public_key)
            return np.asarray(self._keys.decrypt(vec), dtype=np.float64)
        if flood:
            raise UnsupportedOperationError(
                "noise flooding is not available for the CKKS statistics backend: its two-limb "
                "encoding (hi * 2**24 + lo) multiplies the flooding noise by 2**24. If the "
                "results are shown to the aggregator (who holds the ciphertexts), use "
                "backend='paillier' (exact, no decryption-error leak)"
            )
        t = self._ctx.load_tensor(aggregate)
        return _unlimb(np.asarray(self._ctx.decrypt(t), dtype=np.float64))


def _load_public(backend: str, public: bytes, allow_insecure: bool) -> Any:
    he = _he()
    if backend == "paillier":
        return he.PaillierPublicKey.load(public, allow_insecure=allow_insecure)
    ctx = he.CKKSContext.load(public)
    if ctx.has_secret_key:
        raise ConfigurationError("the key holder sent a context with its secret key; refusing")
    return ctx


def _encrypt(backend: str, key: Any, values: np.ndarray) -> Any:
    if backend == "paillier":
        return key.encrypt(values, precision_bits=PAILLIER_FRAC_BITS, max_abs=PAILLIER_MAX_ABS)
    return key.encrypt(_limbs(values))


def owner_message(backend: str, public: bytes, values: np.ndarray, *,
                  allow_insecure: bool = False) -> bytes:
    """A data owner encrypts its sufficient statistics under the key holder's public key."""
    key = _load_public(backend, public, allow_insecure)
    return _encrypt(backend, key, np.asarray(values, dtype=np.float64)).serialize()


class Aggregator:
    """Adds ciphertexts; holds no secret key."""

    def __init__(self, backend: str, public: bytes, *, allow_insecure: bool = False) -> None:
        self.backend = backend
        self._key = _load_public(backend, public, allow_insecure)
        self._total: Any = None
        self.count = 0

    def add(self, message: bytes) -> None:
        if self.backend == "paillier":
            v = _he().PaillierVector.load(message, self._key)
        else:
            v = self._key.load_tensor(message)
        if self._total is not None and tuple(v.shape) != tuple(self._total.shape):
            raise ConfigurationError(
                f"owner message {self.count} has shape {tuple(v.shape)}, expected "
                f"{tuple(self._total.shape)}: the owners computed different statistics")
        self._total = v if self._total is None else self._total + v
        self.count += 1

    def add_noise(self, noise: np.ndarray) -> None:
        """Add encrypted noise (real units, already on the fixed-point grid) to the aggregate."""
        if self._total is None:
            raise ConfigurationError("add the owners' messages before the noise")
        self._total = self._total + _encrypt(self.backend, self._key,
                                             np.asarray(noise, dtype=np.float64))

    def result_message(self) -> bytes:
        if self._total is None:
            raise ConfigurationError("no owner messages were aggregated")
        return self._total.serialize()
