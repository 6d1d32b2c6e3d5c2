"""Additive-HE kernels for joint statistics: data owners, an aggregator and a key holder.

Roles and what each learns (semi-honest, aggregator and key holder do not collude):

* **key holder** generates the key pair (Paillier, or a CKKS context), sends the public key /
  public context, and later decrypts exactly two ciphertexts: the summed row count
  (:meth:`KeyHolder.open_count`), then, if the release policy allows it, the aggregate of the
  other statistics (:meth:`KeyHolder.open`). It learns the summed sufficient statistics (row
  count, column sums, sums of products, histogram counts) — slightly more than a lone mean or
  correlation, since the final statistics are computed from them — and, under CKKS, nothing
  per limb (the aggregator's zero-sum mask, below).
* **data owner** (one per dataset) computes its own sufficient statistics locally, encrypts them
  under the public key and sends them to the aggregator. It learns nothing.
* **aggregator** holds no secret key; it adds the owners' ciphertexts (and, for a DP release,
  its own encrypted noise; under CKKS, a zero-sum limb mask) and forwards the sum to the key
  holder. It learns the message sizes only.

Every message crosses the "wire" as bytes from ``serialize()`` and is loaded with the receiving
role's own key object; :class:`Wire` records who sent how many bytes to whom.

CKKS: an exact, integer release that shows only the aggregate
---------------------------------------------------------------
Every sufficient statistic ``v`` is put on the fixed-point grid ``2**-CKKS_FRAC_BITS``
(``F = 24``): ``v_int = round(v * 2**24)``, an exact Python integer with ``|v_int| < 2**72``
(``|v| < CKKS_MAX_ABS = 2**48`` real units per owner; larger values raise
:class:`~veil.errors.ConfigurationError` naming the magnitude). ``v_int`` is split into
``CKKS_LIMBS = 18`` integer limbs of ``b = CKKS_LIMB_BITS = 4`` bits, ``v_int = sum_k l_k
2**(4k)`` with ``l_0 .. l_16`` in ``[0, 16)`` and the signed top limb in ``[-16, 16)``; each limb
is one CKKS slot. Adding ciphertexts adds the limbs slot-wise.

* **Zero-sum limb mask** (what the key holder sees). Limb-wise sums are not a function of the
  aggregate alone: the carries out of each limb and the number of negative terms (the top limb)
  depend on the individual inputs — owners (+5, -3) and (+1, +1) both sum to 2 but have
  different limb sums, and with DP the top limb would show the sign of the noise. So the
  aggregator adds, as the last encrypted vector, a random element of the lattice of zero-sum
  limb vectors: ``mask = sum_j r_j (2**b e_j - e_(j+1))`` for ``j < CKKS_LIMBS - 1``, ``r_j``
  uniform in ``[-2**31, 2**31)`` (``CKKS_MASK_BITS = 32``, from :mod:`secrets`). It adds 0 to
  the recombined integer, so the release is unchanged. For a given aggregate ``V`` every
  possible limb-sum vector is ``canon(V) + sum_j c_j (2**b e_j - e_(j+1))`` with carries
  ``c_j`` in ``[0, T]`` (``T`` encrypted data vectors); the key holder sees ``c_j + r_j``. For
  two input sets with the same aggregate the views are uniform boxes shifted by at most ``T``
  per coordinate, so their statistical distance is at most ``(CKKS_LIMBS - 1) * T / 2**32 <=
  17 * 63 / 2**32 < 2**-21.9`` per statistic (:data:`CKKS_HIDING_BOUND`): the key holder
  learns the aggregate integer (plus DP noise) and, up to that distance, nothing per limb.
  The sub-integer part of the raw decryption (CKKS noise, below 0.125) is rounded away and is
  not covered by that bound: it includes SEAL's message-dependent encoding rounding of each
  vector, far below the fresh encryption noise (see docs/security/stats.md).
* **Budget** (why these sizes): with ``N = 8192`` one 60-bit ``q0`` holds ``scale + integer
  bits + 1``. A fresh ciphertext's decryption error is below ``B = 2N / 2**scale`` per slot
  (:func:`veil.he.lattice.ckks.error_constants`, ten standard deviations); the sum of
  ``CKKS_MAX_TERMS + 1 = 64`` vectors (at most 63 owners plus DP noise, plus the mask) must
  stay below 0.125, hence scale ``2**23`` and slot values ``|x| < 2**36``. Data limbs sum to
  at most ``63 * 16 < 2**10``; the mask's limbs are at most ``17 * 2**31 < 2**35.1``. Larger
  masks would need more integer bits than ``q0`` has; smaller limbs shrink the factor
  ``2**b`` by which the mask grows the low limbs (``b = 4`` is within a bit of the best
  ``b``, at 18 slots per statistic).
* **Rounding error** (the only error of the release): at most ``2**-(F+1) = 2**-25 ≈ 3.0e-8``
  per statistic per owner, so at most ``P * 2**-25`` on a sum over ``P`` owners, plus the
  float64 rounding of the decoded sum (half an ulp, relative ``2**-53``). Counts and histogram
  counts are integers, hence exact. DP noise is added on the same grid (it must already lie on
  it; nothing is rounded).
* **Decryption**: the key holder rounds every decrypted limb to the nearest integer, checks it
  was within ``0.25`` of it (otherwise :class:`~veil.errors.ConfigurationError`: the parameters
  lack precision; this cannot happen within the bounds above), recombines the limbs with exact
  Python integers and divides by ``2**24`` (correctly rounded to float64). The released numbers
  are a deterministic function of the exact integer aggregate; ``flood=True`` is accepted and
  has no effect. (This holds for the semi-honest roles above; an aggregator that adds crafted
  half-integer offsets is outside that model.)
* **Count first** (minimum cohort): :func:`veil.stats.joint` sends the row counts in their own
  ciphertext; the key holder decrypts that one first (:meth:`KeyHolder.open_count`), the
  release policy is checked for every recipient, and only then are the values decrypted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.errors import ConfigurationError

__all__ = ["Wire", "KeyHolder", "SumAggregator", "owner_message", "PAILLIER_FRAC_BITS",
           "CKKS_LIMB_BITS", "CKKS_LIMBS", "CKKS_FRAC_BITS", "CKKS_MAX_ABS", "CKKS_MAX_TERMS",
           "CKKS_MASK_BITS", "CKKS_HIDING_BOUND", "encode_fixed", "to_limbs", "from_limbs",
           "decode_fixed", "round_limbs", "zero_sum_mask", "check_statistics"]

PAILLIER_FRAC_BITS = 32
PAILLIER_MAX_ABS = 2.0**62
CKKS_LIMB_BITS = 4
CKKS_LIMBS = 18
CKKS_FRAC_BITS = 24
_INT_BITS = CKKS_LIMB_BITS * CKKS_LIMBS  # |v_int| < 2**72
CKKS_MAX_ABS = 2.0 ** (_INT_BITS - CKKS_FRAC_BITS)  # 2**48 real units per owner
_CKKS_PRECISION, _CKKS_INTEGER = 23, 36  # scale 2**23, slot values |x| < 2**36, q0 = 60 bits
CKKS_MAX_TERMS = 63  # encrypted data vectors (owners plus DP noise); the mask is one more
CKKS_MASK_BITS = 32  # mask coefficients r_j uniform in [-2**31, 2**31)
CKKS_HIDING_BOUND = (CKKS_LIMBS - 1) * CKKS_MAX_TERMS / 2.0**CKKS_MASK_BITS  # < 2**-21.9
_MASK_BOUND = float(((1 << CKKS_LIMB_BITS) + 1) << (CKKS_MASK_BITS - 1))  # 17 * 2**31
_ROUND_SLACK = 0.25


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


# -- CKKS fixed-point integer encoding ---------------------------------------------------------

def encode_fixed(values: Any, *, on_grid: bool = False, what: str = "sufficient statistic",
                 labels: Sequence[str] | None = None) -> list[int]:
    """``round(v * 2**CKKS_FRAC_BITS)`` per value, as exact Python integers (``|v| < 2**48``).

    Scaling by a power of two is exact in float64 and ``np.rint`` returns the nearest integer
    exactly (ties to even), so the only error is the rounding itself, at most ``2**-25``.
    ``on_grid=True`` (DP noise) requires every value to lie on the grid already.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    _check_finite(arr, what, "CKKS", CKKS_MAX_ABS, f"2^{_INT_BITS - CKKS_FRAC_BITS}", labels)
    mag = np.abs(arr)
    if arr.size and float(mag.max()) >= CKKS_MAX_ABS:
        i = int(mag.argmax())
        raise ConfigurationError(
            f"{_label(what, i, labels)} has magnitude {mag[i]:.6g}, outside the CKKS "
            "statistics backend's range "
            f"|value| < 2^{_INT_BITS - CKKS_FRAC_BITS} = {CKKS_MAX_ABS:.6g} per data owner "
            f"({_INT_BITS}-bit fixed point, {CKKS_FRAC_BITS} fractional bits); rescale the data "
            "(e.g. other units, so that column sums and sums of squares stay below that) or "
            "use backend='paillier' (range 2^62)")
    scaled = arr * 2.0**CKKS_FRAC_BITS
    ints = np.rint(scaled)
    if on_grid:
        off = ints != scaled
        if off.any():
            i = int(off.argmax())
            raise ConfigurationError(
                f"{what} {i} = {float(arr[i])!r} is not on the 2^-{CKKS_FRAC_BITS} grid of the "
                f"CKKS statistics backend; draw it in units of 2^-{CKKS_FRAC_BITS} "
                f"(frac_bits <= {CKKS_FRAC_BITS}) so that it is added exactly")
    return [int(v) for v in ints.tolist()]


def _label(what: str, i: int, labels: Sequence[str] | None) -> str:
    return labels[i] if labels is not None and i < len(labels) else f"{what} {i}"


def _check_finite(arr: np.ndarray, what: str, backend: str, limit: float, name: str,
                  labels: Sequence[str] | None = None) -> None:
    """A non-finite statistic of finite data is an overflow: say it is out of range."""
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(bad.argmax())
        kind = "missing (NaN)" if np.isnan(arr[i]) else "beyond float64 (it overflowed)"
        raise ConfigurationError(
            f"{_label(what, i, labels)} is {kind}: it exceeds the {backend} statistics "
            "backend's range "
            f"|value| < {name} = {limit:.6g} per data owner; the column sums or sums of squares "
            "are too large: rescale the data (e.g. other units), declare bounds=(low, high) to "
            "clip, and remove missing values")


def _check_paillier_range(arr: np.ndarray, what: str,
                          labels: Sequence[str] | None = None) -> None:
    _check_finite(arr, what, "Paillier", PAILLIER_MAX_ABS, "2^62", labels)
    mag = np.abs(arr)
    if arr.size and float(mag.max()) > PAILLIER_MAX_ABS:
        i = int(mag.argmax())
        raise ConfigurationError(
            f"{_label(what, i, labels)} has magnitude {float(mag[i]):.6g}, outside the "
            f"Paillier statistics backend's range |value| <= 2^62 = {PAILLIER_MAX_ABS:.6g} "
            "per data owner (fixed "
            f"point, {PAILLIER_FRAC_BITS} fractional bits); rescale the data (e.g. other units, "
            "so that column sums and sums of squares stay below that) or declare bounds=... to "
            "clip")


def to_limbs(ints: Sequence[int]) -> np.ndarray:
    """Split integers ``|v| < 2**72`` into limbs: int64 array ``(CKKS_LIMBS, n)``, low first.

    ``v == sum(limbs[k] << (CKKS_LIMB_BITS * k))``; the low limbs are in
    ``[0, 2**CKKS_LIMB_BITS)``, the top limb (arithmetic shift, i.e. floor) in
    ``[-2**CKKS_LIMB_BITS, 2**CKKS_LIMB_BITS)``.
    """
    mask = (1 << CKKS_LIMB_BITS) - 1
    top = (CKKS_LIMBS - 1) * CKKS_LIMB_BITS
    out = np.empty((CKKS_LIMBS, len(ints)), dtype=np.int64)
    for j, raw in enumerate(ints):
        v = int(raw)
        if not -(1 << _INT_BITS) <= v < (1 << _INT_BITS):
            raise ConfigurationError(
                f"fixed-point integer {j} = {v} does not fit {CKKS_LIMBS} limbs of "
                f"{CKKS_LIMB_BITS} bits (|v| < 2^{_INT_BITS}); rescale the data or use "
                "backend='paillier'")
        for k in range(CKKS_LIMBS - 1):
            out[k, j] = (v >> (k * CKKS_LIMB_BITS)) & mask
        out[-1, j] = v >> top
    return out


def from_limbs(limbs: Any) -> list[int]:
    """Exact inverse of :func:`to_limbs`, also for limb-wise *sums* (any integer limbs)."""
    arr = np.asarray(limbs)
    if arr.ndim != 2 or arr.shape[0] != CKKS_LIMBS:
        raise ConfigurationError(
            f"expected limbs of shape ({CKKS_LIMBS}, n), got {arr.shape}")
    return [sum(int(arr[k, j]) << (k * CKKS_LIMB_BITS) for k in range(CKKS_LIMBS))
            for j in range(arr.shape[1])]


def zero_sum_mask(n: int) -> np.ndarray:
    """A uniformly random zero-sum limb matrix ``(CKKS_LIMBS, n)`` (int64): ``from_limbs`` of it
    is ``[0] * n``. Column ``i`` is ``sum_j r_j (2**b e_j - e_(j+1))`` with ``r_j`` uniform in
    ``[-2**(CKKS_MASK_BITS-1), 2**(CKKS_MASK_BITS-1))`` from :mod:`secrets`; every entry is at
    most ``(2**b + 1) * 2**(CKKS_MASK_BITS-1)`` in magnitude. See the module docstring."""
    half = 1 << (CKKS_MASK_BITS - 1)
    r = np.array([[secrets.randbelow(2 * half) - half for _ in range(n)]
                  for _ in range(CKKS_LIMBS - 1)], dtype=np.int64).reshape(CKKS_LIMBS - 1, n)
    out = np.zeros((CKKS_LIMBS, n), dtype=np.int64)
    out[:-1] += r << CKKS_LIMB_BITS
    out[1:] -= r
    return out


def decode_fixed(ints: Sequence[int]) -> np.ndarray:
    """``v / 2**CKKS_FRAC_BITS`` per integer, correctly rounded to float64."""
    den = 1 << CKKS_FRAC_BITS
    return np.array([int(v) / den for v in ints], dtype=np.float64)


def round_limbs(decrypted: Any) -> np.ndarray:
    """Round decrypted limb sums to int64, refusing any slot farther than 0.25 from an integer."""
    x = np.asarray(decrypted, dtype=np.float64).reshape(-1)
    r = np.rint(x)
    dev = np.abs(x - r)
    bad = ~np.isfinite(x) | (dev > _ROUND_SLACK) | (np.abs(r) >= 2.0**_CKKS_INTEGER)
    if bad.any():
        i = int(bad.argmax())
        raise ConfigurationError(
            f"decrypted CKKS slot {i} is {float(x[i])!r}, {float(dev[i]):.3g} from the nearest "
            f"integer (at most {_ROUND_SLACK} allowed; |value| < 2^{_CKKS_INTEGER}): the CKKS "
            "parameters lack the precision for an exact release (more than "
            f"{CKKS_MAX_TERMS} encrypted vectors summed, or a ciphertext not produced by "
            "veil.protocols.stats.homomorphic); aggregate fewer owners per release or use "
            "backend='paillier'")
    return r.astype(np.int64)


def _ckks_plain(values: np.ndarray, *, on_grid: bool) -> np.ndarray:
    what = "DP noise value" if on_grid else "sufficient statistic"
    limbs = to_limbs(encode_fixed(values, on_grid=on_grid, what=what))
    return limbs.reshape(-1).astype(np.float64)  # limb-major: all l0, all l1, all l2


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
        self._count_opened = False

    def public_message(self) -> bytes:
        if self.backend == "paillier":
            return self._keys.public_key.serialize()
        return self._ctx.public().serialize()

    def open_count(self, aggregate: bytes) -> float:
        """Decrypt the row-count aggregate (one value), before :meth:`open`; at most once.

        The caller checks the release policy (minimum cohort, for every recipient) on this
        count and only then asks for the values, so a refused release decrypts no value.
        """
        if self._count_opened or self._opened:
            raise ConfigurationError(
                "this key holder already decrypted its count (or its values); the count comes "
                "first and once per key: use a fresh key per release")
        self._count_opened = True
        out = self._decrypt(aggregate)
        if out.size != 1:
            raise ConfigurationError(
                f"the count aggregate holds {out.size} values, expected 1")
        return float(out[0])

    def open(self, aggregate: bytes, *, flood: bool = False) -> np.ndarray:
        """Decrypt the aggregate (once per key holder: a second call raises).

        ``flood`` has no effect on either backend: Paillier decrypts exactly, and the CKKS
        release is exact-rounded (decrypted limbs are rounded to integers, so no decryption
        noise reaches the result; see the module docstring). It is accepted for compatibility.
        """
        if self._opened:
            raise ConfigurationError(
                "this key holder already decrypted its aggregate; use a fresh key per release")
        self._opened = True
        # ``flood`` is deliberately unused: rounding the limbs erases the decryption noise
        return self._decrypt(aggregate)

    def _decrypt(self, aggregate: bytes) -> np.ndarray:
        if self.backend == "paillier":
            vec = _he().PaillierVector.load(aggregate, self._keys.public_key)
            return np.asarray(self._keys.decrypt(vec), dtype=np.float64)
        return decode_fixed(from_limbs(self._decrypt_limbs(aggregate)))

    def _decrypt_limbs(self, aggregate: bytes) -> np.ndarray:
        """CKKS: the rounded limb sums ``(CKKS_LIMBS, n)``: everything the key holder sees."""
        t = self._ctx.load_tensor(aggregate)
        raw = np.asarray(self._ctx.decrypt(t), dtype=np.float64).reshape(-1)
        if raw.size % CKKS_LIMBS:
            raise ConfigurationError(
                f"the CKKS aggregate has {raw.size} slots, not a multiple of {CKKS_LIMBS} limbs: "
                "it was not produced by veil.protocols.stats.homomorphic")
        return round_limbs(raw).reshape(CKKS_LIMBS, -1)


def _load_public(backend: str, public: bytes, allow_insecure: bool) -> Any:
    he = _he()
    if backend == "paillier":
        return he.PaillierPublicKey.load(public, allow_insecure=allow_insecure)
    ctx = he.CKKSContext.load(public)
    if ctx.has_secret_key:
        raise ConfigurationError("the key holder sent a context with its secret key; refusing")
    return ctx


def _encrypt(backend: str, key: Any, values: np.ndarray, *, on_grid: bool = False) -> Any:
    if backend == "paillier":
        _check_paillier_range(values, "DP noise value" if on_grid else "sufficient statistic")
        return key.encrypt(values, precision_bits=PAILLIER_FRAC_BITS, max_abs=PAILLIER_MAX_ABS)
    return key.encrypt(_ckks_plain(values, on_grid=on_grid),
                       value_bound=float(1 << CKKS_LIMB_BITS))


def check_statistics(backend: str, values: Any, labels: Sequence[str] | None = None) -> None:
    """Raise :class:`ConfigurationError` if a data owner's statistics fall outside the backend's
    range (or overflowed float64), naming the statistic by ``labels[i]`` when given."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if backend == "paillier":
        _check_paillier_range(arr, "sufficient statistic", labels)
    else:
        encode_fixed(arr, labels=labels)


def owner_message(backend: str, public: bytes, values: np.ndarray, *,
                  allow_insecure: bool = False) -> bytes:
    """A data owner encrypts its sufficient statistics under the key holder's public key."""
    key = _load_public(backend, public, allow_insecure)
    return _encrypt(backend, key, np.asarray(values, dtype=np.float64)).serialize()


class SumAggregator:
    """The aggregator role of the statistics release: sums the owners' ciphertexts (Paillier
    vectors, or CKKS limb vectors), adds DP noise and, under CKKS, the zero-sum limb mask; holds
    no secret key. (Not federated learning's ``Aggregator`` of :mod:`veil.fl`.)"""

    def __init__(self, backend: str, public: bytes, *, allow_insecure: bool = False) -> None:
        self.backend = backend
        self._key = _load_public(backend, public, allow_insecure)
        self._total: Any = None
        self.count = 0
        self._terms = 0  # encrypted vectors summed (owners plus noise)
        self._masked = False  # CKKS: the zero-sum limb mask was added

    def _take_term(self, what: str) -> None:
        if self._masked:
            raise ConfigurationError(
                f"{what} arrived after the aggregate was sent to the key holder; add every "
                "message and the noise before result_message()")
        if self.backend == "ckks" and self._terms >= CKKS_MAX_TERMS:
            raise ConfigurationError(
                f"{what} would be encrypted vector {self._terms + 1} of this CKKS aggregate; the "
                f"CKKS statistics backend sums at most {CKKS_MAX_TERMS} (owners plus DP noise; "
                f"plus its zero-sum mask), so that limb sums stay below 2^{_CKKS_INTEGER} and "
                "exact; use fewer data owners per release or backend='paillier'")
        self._terms += 1

    def add(self, message: bytes) -> None:
        if self.backend == "paillier":
            v = _he().PaillierVector.load(message, self._key)
        else:
            v = self._key.load_tensor(message)
        if self._total is not None and tuple(v.shape) != tuple(self._total.shape):
            raise ConfigurationError(
                f"owner message {self.count} has shape {tuple(v.shape)}, expected "
                f"{tuple(self._total.shape)}: the owners computed different statistics")
        self._take_term(f"owner message {self.count}")
        self._total = v if self._total is None else self._total + v
        self.count += 1

    def add_noise(self, noise: np.ndarray) -> None:
        """Add encrypted noise (real units, already on the fixed-point grid) to the aggregate.

        CKKS: the noise goes through the same integer encoding as the statistics and must lie
        on the ``2**-CKKS_FRAC_BITS`` grid (it is added exactly, never rounded).
        """
        if self._total is None:
            raise ConfigurationError("add the owners' messages before the noise")
        self._take_term("the DP noise")
        self._total = self._total + _encrypt(self.backend, self._key,
                                             np.asarray(noise, dtype=np.float64), on_grid=True)

    def result_message(self) -> bytes:
        """The aggregate for the key holder. CKKS: first adds the zero-sum limb mask (once), so
        the key holder's limb sums show nothing but the aggregate (module docstring)."""
        if self._total is None:
            raise ConfigurationError("no owner messages were aggregated")
        if self.backend == "ckks" and not self._masked:
            n = int(np.prod(self._total.shape)) // CKKS_LIMBS
            mask = zero_sum_mask(n).reshape(-1).astype(np.float64)
            self._total = self._total + self._key.encrypt(mask, value_bound=_MASK_BOUND)
            self._masked = True
        return self._total.serialize()
