"""The CKKS noise model behind ``CKKSTensor.error_bound`` (SEAL 4.1 as shipped in TenSEAL 0.3.18).

Every bound here is in value units (decrypted value minus exact value, one slot) and is
``TAILS = 12`` standard deviations of the average-case model of Costache, Curtis, Hales, Murphy,
Ogilvie and Player (2020): noise polynomials with independent coefficients, evaluated at the
slot roots. Three sources:

* **rounding** (fresh encryption, rescale): :func:`error_constants`.
* **key switching** (every rotation; SEAL's hybrid key switching with one special prime ``P``
  and one RNS digit per data prime): :func:`key_switch_levels`. It has a part that changes with
  every ciphertext and a part fixed by the Galois key, which is the same in every rotation that
  uses that key and is concentrated on the first slot, where ``sum`` and ``dot`` put their result.
* **how a rotate-and-add circuit accumulates them**: :class:`Schedule`, with the exact rotation
  plans of TenSEAL's ``sum_vector`` (:func:`sum_schedule`), its diagonal matrix product
  (:func:`diagonal_schedule`) and ``enc_matmul_plain`` (:func:`fold_schedule`), and SEAL's
  decomposition of a rotation into power-of-two key switches (:func:`rotation_keys`).

The derivation and the measurements are in docs/security/he-ckks.md ("Key switching").
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["TAILS", "SIGMA2_E", "KeySwitch", "Schedule", "error_constants", "key_switch_levels",
           "rotation_keys", "sum_schedule", "diagonal_schedule", "fold_schedule"]

#: Standard deviations in every bound (Gaussian tail below 2**-100 per slot).
TAILS = 12.0
#: Variance of SEAL 4.1's error distribution: centered binomial over 21 coin pairs (sigma 3.24).
SIGMA2_E = 10.5


def error_constants(params: Any) -> tuple[float, float]:
    """(fresh encryption bound, rescale rounding bound) per slot, in value units.

    SEAL encrypts at the key level and divides by the special prime, so a fresh ciphertext's
    error is rounding noise, like the error a rescale adds: coefficient variance about ``N/18``
    (rounding variance 1/12 times the ternary secret's ``2N/3``), hence a per-slot standard
    deviation of about ``N/6`` before dividing by the scale (SEAL 4.1 matches it to 1 %).
    ``TAILS`` of them give ``B = 2 * N / 2**scale_bits``. For one key the variance differs
    between slots (it is proportional to ``1 + |s(zeta)|^2``), so a single slot's error is
    Laplace-like over keys and encryptions and exceeds ``B`` with probability near 2**-24.5;
    docs/security/he-ckks.md ("Open issue") has the numbers.
    """
    b = TAILS / 6.0 * params.poly_modulus_degree / 2.0**params.scale_bits
    return b, b


@dataclass(frozen=True)
class KeySwitch:
    """Bounds on the noise one key switch adds at one level, in value units at the working scale.

    ``fresh``: per slot, the part that depends on the ciphertext (digit times key error, centred)
    plus the rounding of the division by ``P``; independent across slots and key switches.
    ``keyed``: the part fixed by the key (the digits' mean ``q_j/2`` times the key's error); the
    same in every use of one Galois key, and a bound on its sum over any set of distinct slots.
    """

    fresh: float
    keyed: float


def key_switch_levels(params: Any) -> tuple[KeySwitch, ...]:
    """:class:`KeySwitch` bounds for a ciphertext at each level ``0 .. params.depth``.

    At level ``l`` the digits are the ciphertext modulo ``q_0 .. q_l``, each uniform in
    ``[0, q_j)`` (SEAL does not centre them), multiplied by the key's error ``e_j`` and divided
    by ``P`` with rounding. With ``rho2 = sum_j (q_j / P)**2``, per slot (real part):
    ``fresh`` has standard deviation ``N * sqrt(s2 * rho2 / 24 + 1/36 + 1/(24 N))`` and the key's
    part ``(q_j - 1)/(1 - zeta) * e_j(zeta) / P`` has variance ``rho2 * s2 * N / (2 |1 - zeta|^2)``
    at the slot root ``zeta``; summed over distinct slots that is at most
    ``rho2 * s2 * N**3 / 16`` (``sum csc^2 = N^2`` over the roots), ``s2 = SIGMA2_E``.
    """
    return _levels(params.poly_modulus_degree, params.scale_bits, params.primes)


@lru_cache(maxsize=64)
def _levels(n: int, scale_bits: int, primes: tuple[int, ...]) -> tuple[KeySwitch, ...]:
    special = primes[-1]
    scale = 2.0**scale_bits
    out = []
    for level in range(len(primes) - 1):
        rho2 = sum((q / special) ** 2 for q in primes[: level + 1])
        fresh = n * math.sqrt(SIGMA2_E * rho2 / 24 + 1 / 36 + 1 / (24 * n))
        keyed = math.sqrt(SIGMA2_E * rho2) * n**1.5 / 4
        out.append(KeySwitch(TAILS * fresh / scale, TAILS * keyed / scale))
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    """The key switches whose noise reaches one output of a rotation circuit.

    ``window``: the sum, over key switches, of how many slots of that switch's output are added
    into the result; ``uses``: ``(key, count)`` for every Galois key used (a key is a step modulo
    the slot count). Schedules of the chunks of one tensor add up (:meth:`__add__`).
    """

    window: int = 0
    uses: tuple[tuple[int, int], ...] = ()

    def __add__(self, other: Schedule) -> Schedule:
        counts = Counter(dict(self.uses))
        counts.update(dict(other.uses))
        return Schedule(self.window + other.window, tuple(sorted(counts.items())))

    def error(self, ks: KeySwitch) -> float:
        """Bound on the key-switching noise in one output.

        The ciphertext-dependent parts are independent, so their variances add (``window``
        slots of ``ks.fresh``); the key's parts add coherently per key (``count * ks.keyed``,
        any windows) and independently across keys.
        """
        coherent = sum(c * c for _, c in self.uses)
        return math.sqrt(self.window * ks.fresh**2 + coherent * ks.keyed**2)


def _naf(value: int) -> list[int]:
    """SEAL's non-adjacent form of ``value`` (``util::naf``): signed powers of two."""
    out, sign, v, i = [], value < 0, abs(value), 0
    while v:
        z = (2 - (v & 3)) if v & 1 else 0
        v = (v - z) >> 1
        if z:
            out.append((-z if sign else z) * (1 << i))
        i += 1
    return out


def rotation_keys(step: int, slots: int) -> list[int]:
    """Galois keys (as steps modulo ``slots``) one ``rotate_vector(step)`` key-switches with.

    TenSEAL generates SEAL's default keys, for the steps ``+-2**i``. SEAL uses the key of the
    step itself when there is one; otherwise it rotates by each term of the step's NAF in turn,
    skipping terms of ``+-slots`` (no rotation).
    """
    r = step % slots
    if r == 0:
        return []
    if not r & (r - 1) or not (slots - r) & (slots - r - 1):
        return [r]
    return [t % slots for t in _naf(step) if abs(t) != slots]


def _schedule(pairs: list[tuple[int, int]], slots: int) -> Schedule:
    """A :class:`Schedule` of ``(step, window)`` rotations."""
    counts: Counter[int] = Counter()
    window = 0
    for step, w in pairs:
        keys = rotation_keys(step, slots)
        counts.update(keys)
        window += w * len(keys)
    return Schedule(window, tuple(sorted(counts.items())))


def _sum_pairs(n: int) -> list[tuple[int, int]]:
    """TenSEAL's ``sum_vector(ct, n)``: ``(step, window)`` of every rotation, recursively."""
    if n <= 1:
        return []
    top = 1 << (n.bit_length() - 1)
    pairs = []
    if top != n:  # rest = rotate(ct, top), summed over its first n - top slots, added at the end
        pairs.append((top, n - top))
        pairs += _sum_pairs(n - top)
    i = top // 2
    while i:  # ct += rotate(ct, i): that switch's noise is then summed over i slots
        pairs.append((i, i))
        i //= 2
    return pairs


@lru_cache(maxsize=256)
def sum_schedule(n: int, slots: int) -> Schedule:
    """Rotations of ``sum`` over the first ``n`` slots of one ciphertext (TenSEAL's
    ``sum_vector``: rotate-and-add by ``top/2, ..., 1`` after folding in the part above the
    largest power of two ``top <= n``). Also the rotations of ``dot``."""
    return _schedule(_sum_pairs(n), slots)


@lru_cache(maxsize=64)
def diagonal_schedule(n: int, slots: int) -> Schedule:
    """Rotations of TenSEAL's diagonal vector-matrix product over ``n`` rows (``mm``): diagonal
    ``i`` is rotated by ``i``, and each output slot gets one slot of every switch's noise."""
    return _schedule([(i, 1) for i in range(1, n)], slots)


@lru_cache(maxsize=256)
def fold_schedule(rows: int, blocks: int, slots: int) -> Schedule:
    """Rotations of TenSEAL's ``enc_matmul_plain`` (``conv2d_im2col``, ``block_sum``): ``blocks``
    (a power of two) groups of ``rows`` slots folded by rotations of ``rows * c`` for
    ``c = blocks/2, ..., 1``; the noise of the fold by ``c`` is then summed over ``c`` slots."""
    pairs, c = [], blocks // 2
    while c:
        pairs.append((rows * c, c))
        c //= 2
    return _schedule(pairs, slots)
