"""Parameters for the lattice schemes (CKKS and BFV), checked against the HE security standard.

Both classes are frozen dataclasses validated in ``__post_init__``: a parameter set either
describes something TenSEAL (SEAL 4.1) can run, or construction fails with a
:class:`~veil.errors.ConfigurationError` that says what to change. Security is checked against
the HomomorphicEncryption.org standard (Albrecht et al., 2018, table for ternary secrets,
classical attacks): the total bit length of the coefficient modulus ``q`` (all primes, the special
key-switching prime included) may not exceed the table's maximum for ``poly_modulus_degree``.
Weaker sets raise :class:`~veil.errors.InsecureParametersError` unless ``allow_insecure=True`` is
passed by name. (SEAL itself refuses sets above the 128-bit line, so such sets can be described
and hashed but not turned into a context.)

Nothing here imports tenseal; this module is cheap to import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from veil.errors import ConfigurationError, InsecureParametersError

__all__ = ["CKKSParams", "BFVParams", "MAX_LOG_Q", "max_log_q", "security_level", "is_prime",
           "batching_prime",
           "seal_primes", "MAX_SCALE_DRIFT"]

#: Max total log2(q) per ring dimension and security level (HE standard, ternary secret).
MAX_LOG_Q: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
_DEGREES = tuple(sorted(MAX_LOG_Q[128]))
_MAX_PRIME_BITS = 60  # SEAL's limit for one RNS prime


def max_log_q(poly_modulus_degree: int, security_bits: int = 128) -> int:
    """Largest total coefficient-modulus bit count that keeps ``security_bits`` at this degree."""
    try:
        return MAX_LOG_Q[security_bits][poly_modulus_degree]
    except KeyError:
        raise ConfigurationError(
            f"no HE-standard entry for poly_modulus_degree={poly_modulus_degree}, "
            f"security_bits={security_bits}; use a degree in {_DEGREES} and 128, 192 or 256 bits"
        ) from None


def security_level(n: int, total_bits: int) -> int:
    """Highest standard level (256/192/128) met, or 0 when below 128 bits."""
    for level in (256, 192, 128):
        if total_bits <= MAX_LOG_Q[level][n]:
            return level
    return 0


def _check_degree(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n not in _DEGREES:
        raise ConfigurationError(
            f"poly_modulus_degree must be a power of two in {_DEGREES}, got {n!r}; "
            "8192 is a good default"
        )
    return n


def _check_bit_sizes(bits: Any, *, minimum: int, what: str) -> tuple[int, ...]:
    try:
        out = tuple(bits)
    except TypeError:
        raise ConfigurationError(
            f"{what} must be a sequence of prime bit sizes, got {bits!r}"
        ) from None
    if len(out) < 2:
        raise ConfigurationError(
            f"{what} needs at least 2 primes (data + special), got {out!r}; e.g. (60, 40, 40, 60)"
        )
    for i, b in enumerate(out):
        if isinstance(b, bool) or not isinstance(b, int) or not minimum <= b <= _MAX_PRIME_BITS:
            raise ConfigurationError(
                f"{what}[{i}] = {b!r} is not a prime size SEAL supports; each entry must be an "
                f"int in [{minimum}, {_MAX_PRIME_BITS}]"
            )
    return out


def _check_security(n: int, total: int, allow_insecure: bool, cls: str) -> None:
    limit = MAX_LOG_Q[128][n]
    if total > limit and not allow_insecure:
        raise InsecureParametersError(
            f"{cls}: total coefficient modulus of {total} bits exceeds {limit} bits, the maximum "
            f"for 128-bit security at poly_modulus_degree={n} (HomomorphicEncryption.org "
            "standard); use fewer or smaller primes, a larger poly_modulus_degree "
            "(e.g. CKKSParams.for_depth(d) picks one), or pass allow_insecure=True by name"
        )


#: Largest :attr:`CKKSParams.scale_drift` that :meth:`CKKSParams.for_depth` accepts (6.25 %).
MAX_SCALE_DRIFT = 2.0**-4


def _pick_ring(cls: Any, depth: int, precision_bits: int, integer_bits: int,
               allow_insecure: bool) -> Any:
    """``for_depth``'s choice: the smallest fitting ring as ``cls`` (CKKSParams), or why that ring
    computes badly; raises :class:`ConfigurationError` when no ring is large enough."""
    q0 = precision_bits + integer_bits + 1
    bits = (q0,) + (precision_bits,) * depth + (q0,)
    total = sum(bits)
    fits = [n for n in _DEGREES
            if total <= MAX_LOG_Q[128][n] and precision_bits >= int(math.log2(2 * n)) + 2]
    if not fits:
        if not allow_insecure:
            deepest = (MAX_LOG_Q[128][_DEGREES[-1]] - 2 * q0) // precision_bits
            raise ConfigurationError(
                f"depth {depth} needs {total} bits of coefficient modulus, more than the "
                f"{MAX_LOG_Q[128][_DEGREES[-1]]} bits allowed at N=32768 for 128-bit "
                f"security; the deepest circuit at precision_bits={precision_bits} is "
                f"{deepest}: lower the depth (smaller polynomial degree) or precision_bits")
        fits = [_DEGREES[-1]]
    n = fits[0]
    try:
        params = cls(n, bits, precision_bits, allow_insecure=allow_insecure)
    except ConfigurationError as exc:  # too few primes = 1 mod 2N of that size
        return f"SEAL cannot build N={n}, {bits}: {exc}"
    if params.scale_drift > MAX_SCALE_DRIFT:
        rel = params.rescale_relative_error
        return (f"at N={n} the {precision_bits}-bit primes SEAL picks (= 1 mod {2 * n}) lie up "
                f"to {100 * rel:.3g}% below 2**{precision_bits}, and TenSEAL resets the scale "
                f"to 2**{precision_bits} after every rescale, so results would drift by up to "
                f"{100 * params.scale_drift:.3g}% over {depth} level(s) (for_depth accepts "
                f"{100 * MAX_SCALE_DRIFT:.3g}%, MAX_SCALE_DRIFT; build CKKSParams directly "
                "to accept more)")
    return params


@dataclass(frozen=True)
class CKKSParams:
    """CKKS parameters: ring degree ``N``, RNS prime sizes and the encoding scale ``2**scale_bits``.

    Layout of ``coeff_mod_bit_sizes``: ``(q0, p1, ..., pd, special)``. ``q0`` holds the final
    result (``q0 - scale_bits - 1`` integer bits, one bit for the sign); each middle prime
    ``p_i`` is consumed by one rescale (one multiplication), so ``depth == len(...) - 2``; the
    last prime is SEAL's special key-switching prime. TenSEAL resets the scale to ``2**scale_bits``
    after every rescale, so the middle primes must have exactly ``scale_bits`` bits.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    allow_insecure: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        n = _check_degree(self.poly_modulus_degree)
        min_bits = int(math.log2(2 * n)) + 2  # primes are 1 mod 2N
        bits = _check_bit_sizes(self.coeff_mod_bit_sizes, minimum=min_bits,
                                what="coeff_mod_bit_sizes")
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        s = self.scale_bits
        if isinstance(s, bool) or not isinstance(s, int) or not 20 <= s < bits[0]:
            raise ConfigurationError(
                f"scale_bits must be an int in [20, {bits[0] - 1}] (below the first prime "
                f"of {bits[0]} bits, which holds the result), got {s!r}"
            )
        for i, b in enumerate(bits[1:-1], start=1):
            if b != s:
                raise ConfigurationError(
                    f"coeff_mod_bit_sizes[{i}] = {b} must equal scale_bits = {s}: TenSEAL "
                    "rescales by these primes and resets the scale, so other sizes give wrong "
                    f"results; use e.g. {(bits[0],) + (s,) * (len(bits) - 2) + (bits[-1],)}"
                )
        if bits[-1] < max(bits[:-1]):
            raise ConfigurationError(
                f"the special prime (last entry, {bits[-1]} bits) must be at least as large as "
                f"every other prime (max {max(bits[:-1])}); make it {max(bits[:-1])} bits"
            )
        if not isinstance(self.allow_insecure, bool):
            raise ConfigurationError(f"allow_insecure must be a bool, got {self.allow_insecure!r}")
        _check_security(n, sum(bits), self.allow_insecure, "CKKSParams")
        seal_primes(n, bits)  # SEAL must find them all: refuse here, not at key generation

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def default(cls) -> CKKSParams:
        """N=8192, primes (60, 40, 40, 60), scale 2^40: depth 2, 4096 slots, 128-bit security."""
        return cls(8192, (60, 40, 40, 60), 40)

    @classmethod
    def for_depth(
        cls,
        depth: int,
        *,
        precision_bits: int = 40,
        integer_bits: int = 19,
        allow_insecure: bool = False,
    ) -> CKKSParams:
        """Smallest secure parameters with ``depth`` rescales that compute accurately.

        The scale is ``2**precision_bits``; results may hold ``|x| < 2**integer_bits``
        (``q0 = precision_bits + integer_bits + 1`` bits, at most 60). Raises
        :class:`ConfigurationError` when no ring degree up to 32768 fits, or when SEAL's
        rescaling primes at the smallest fitting degree lie so far below ``2**precision_bits``
        that TenSEAL's scale reset would distort results by more than :data:`MAX_SCALE_DRIFT`
        (:attr:`scale_drift`; small ``precision_bits`` at large ``N``), naming the smallest
        ``precision_bits`` that works. (A larger ``N`` never helps: its primes, ``1 mod 2N``,
        are a subset of the smaller ring's.)
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ConfigurationError(f"depth must be an int >= 0, got {depth!r}")
        q0 = precision_bits + integer_bits + 1
        if not 20 <= precision_bits < q0 <= _MAX_PRIME_BITS or integer_bits < 0:
            raise ConfigurationError(
                f"precision_bits + integer_bits + 1 = {q0} must fit one prime of at most "
                f"{_MAX_PRIME_BITS} bits (precision_bits >= 20, integer_bits >= 0); got "
                f"precision_bits={precision_bits}, integer_bits={integer_bits}"
            )
        found = _pick_ring(cls, depth, precision_bits, integer_bits, allow_insecure)
        if isinstance(found, CKKSParams):
            return found
        better = None
        for pb in range(precision_bits + 1, _MAX_PRIME_BITS - integer_bits):
            try:
                if isinstance(_pick_ring(cls, depth, pb, integer_bits, allow_insecure),
                              CKKSParams):
                    better = pb
                    break
            except ConfigurationError:  # no ring is large enough: more bits will not help
                break
        hint = (f"use precision_bits >= {better} (CKKSParams.for_depth({depth}, "
                f"precision_bits={better}, integer_bits={integer_bits})) or a smaller depth"
                if better else f"no precision_bits fits depth {depth}: lower the depth")
        raise ConfigurationError(
            f"CKKSParams.for_depth({depth}, precision_bits={precision_bits}, integer_bits="
            f"{integer_bits}): {found}; {hint}"
        )

    # -- derived -----------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Real values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications (rescales) available on a fresh ciphertext."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def primes(self) -> tuple[int, ...]:
        """The RNS primes SEAL generates for these sizes (see :func:`seal_primes`)."""
        return seal_primes(self.poly_modulus_degree, self.coeff_mod_bit_sizes)

    @property
    def rescale_relative_error(self) -> float:
        """``max |2**scale_bits / p - 1|`` over the rescaling primes: TenSEAL resets the scale
        to ``2**scale_bits`` after dividing by ``p``, so each multiplication scales the result
        by up to this relative error."""
        middle = self.primes[1:-1]
        return max((abs(2.0**self.scale_bits / p - 1) for p in middle), default=0.0)

    @property
    def scale_drift(self) -> float:
        """``(1 + rescale_relative_error)**depth - 1``: how far TenSEAL's scale reset can move a
        value that goes through every level (relative; key-independent). ``for_depth`` keeps it
        below :data:`MAX_SCALE_DRIFT`."""
        return (1.0 + self.rescale_relative_error) ** self.depth - 1.0

    @property
    def security_bits(self) -> int:
        """256, 192 or 128 by the HE standard table; 0 means below 128 bits (insecure)."""
        return security_level(self.poly_modulus_degree, self.total_bits)

    @property
    def integer_bits(self) -> int:
        """Bits left for the integer part of a result: ``q0 - scale_bits - 1`` (sign bit)."""
        return self.coeff_mod_bit_sizes[0] - self.scale_bits - 1

    @property
    def max_abs_value(self) -> float:
        """Inputs must satisfy ``|x| < max_abs_value = 2**integer_bits``.

        ``|x| * 2**scale_bits`` then stays below ``q0 / 2``, the last modulus a result is
        decrypted under. Results must respect the same bound; Veil checks inputs only.
        """
        return float(2**self.integer_bits)

    def describe(self) -> dict[str, Any]:
        """Canonical description (hashed into every envelope by ``serialize.params_digest``)."""
        return {
            "scheme": "ckks",
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }


@dataclass(frozen=True)
class BFVParams:
    """BFV parameters: ring degree, plaintext modulus ``t`` (a prime = 1 mod 2N, so values pack
    into N slots) and RNS prime sizes (last one special).

    Values are integers mod ``t``, represented centred in ``[-(t-1)/2, (t-1)/2]``; encryption
    refuses inputs outside that range rather than wrapping them.
    """

    poly_modulus_degree: int
    plain_modulus: int
    coeff_mod_bit_sizes: tuple[int, ...]
    allow_insecure: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        n = _check_degree(self.poly_modulus_degree)
        bits = _check_bit_sizes(self.coeff_mod_bit_sizes, minimum=int(math.log2(2 * n)) + 2,
                                what="coeff_mod_bit_sizes")
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        t = self.plain_modulus
        if isinstance(t, bool) or not isinstance(t, int) or not 2 < t < 2**_MAX_PRIME_BITS:
            raise ConfigurationError(f"plain_modulus must be an int in (2, 2^60), got {t!r}")
        if t % (2 * n) != 1 or not is_prime(t):
            raise ConfigurationError(
                f"plain_modulus {t} must be a prime = 1 mod 2N = {2 * n} for batching; "
                f"BFVParams.for_plain_bits(20, poly_modulus_degree={n}) picks one "
                f"({batching_prime(20, n)})"
            )
        if not isinstance(self.allow_insecure, bool):
            raise ConfigurationError(f"allow_insecure must be a bool, got {self.allow_insecure!r}")
        _check_security(n, sum(bits), self.allow_insecure, "BFVParams")
        if t in seal_primes(n, bits):
            raise ConfigurationError(
                f"plain_modulus {t} is also one of the coefficient primes SEAL picks for "
                f"{bits} at N={n}; SEAL needs them coprime: change one of the bit sizes or "
                "use another plain_modulus"
            )
        if self.depth < 0:
            raise ConfigurationError(
                f"BFVParams: {self.data_bits} data bits of coefficient modulus leave no noise "
                f"budget for a {t.bit_length()}-bit plain_modulus; use more primes or a smaller "
                "plain_modulus"
            )

    @classmethod
    def default(cls) -> BFVParams:
        """N=8192, t=1032193 (20-bit prime), q = SEAL's 218-bit default: depth 3, 128-bit."""
        return cls(8192, 1032193, (43, 43, 44, 44, 44))

    @classmethod
    def for_plain_bits(cls, plain_bits: int = 20, *, poly_modulus_degree: int = 8192) -> BFVParams:
        """Secure parameters at ``poly_modulus_degree`` with a ``plain_bits``-bit batching prime
        and the largest coefficient modulus the standard allows (SEAL's defaults)."""
        n = _check_degree(poly_modulus_degree)
        bits = _SEAL_BFV_DEFAULT.get(n)
        if bits is None:
            raise ConfigurationError(f"no default BFV modulus for N={n}; use N >= 4096")
        return cls(n, batching_prime(plain_bits, n), bits)

    @property
    def slots(self) -> int:
        """Values per ciphertext: N/2 (one row of SEAL's 2 x N/2 batching matrix, so that
        rotations, and therefore ``sum``/``dot``, stay within the vector)."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def depth(self) -> int:
        """Conservative count of sequential ciphertext multiplications before decryption fails.

        Noise model (calibrated on SEAL 4.1): fresh budget about ``log q_data - log t - 8`` bits,
        each ciphertext multiplication costs about ``log t + log N - 1`` bits. Decryption also
        checks the real noise budget, so an over-deep result is never returned.
        """
        t_bits = self.plain_modulus.bit_length()
        log_n = int(math.log2(self.poly_modulus_degree))
        fresh = self.data_bits - t_bits - 8
        return (fresh - 1) // (t_bits + log_n - 1) if fresh > 0 else -1

    @property
    def security_bits(self) -> int:
        return security_level(self.poly_modulus_degree, sum(self.coeff_mod_bit_sizes))

    @property
    def max_abs_value(self) -> int:
        """Inputs must satisfy ``|x| <= (t - 1) // 2``."""
        return (self.plain_modulus - 1) // 2

    def describe(self) -> dict[str, Any]:
        return {
            "scheme": "bfv",
            "poly_modulus_degree": self.poly_modulus_degree,
            "plain_modulus": self.plain_modulus,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
        }


_SEAL_BFV_DEFAULT = {
    4096: (36, 36, 37),
    8192: (43, 43, 44, 44, 44),
    16384: (48, 48, 48, 49, 49, 49, 49, 49, 49),
    32768: (55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 56, 56, 56),
}


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (fixed bases; exact for 64-bit inputs)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime(bits: int, poly_modulus_degree: int) -> int:
    """Smallest prime of exactly ``bits`` bits that is 1 mod ``2 * poly_modulus_degree``."""
    step = 2 * poly_modulus_degree
    if isinstance(bits, bool) or not isinstance(bits, int) or not step.bit_length() < bits <= 60:
        raise ConfigurationError(
            f"plain modulus bits must be an int in ({step.bit_length()}, 60] for N="
            f"{poly_modulus_degree}, got {bits!r}"
        )
    k = (2 ** (bits - 1)) // step + 1
    while k * step + 1 < 2**bits:
        if is_prime(k * step + 1):
            return k * step + 1
        k += 1
    raise ConfigurationError(f"no {bits}-bit prime = 1 mod {step}")  # pragma: no cover


def seal_primes(poly_modulus_degree: int, bit_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The primes SEAL's ``CoeffModulus::Create`` picks: for each size, primes = 1 mod 2N going
    down from ``2**bits``; entries of equal size take them smallest-first (SEAL pops the back).

    Raises :class:`ConfigurationError` when there are fewer such primes of some size than
    ``bit_sizes`` asks for (SEAL fails with "failed to find enough qualifying primes").
    """
    return _seal_primes(int(poly_modulus_degree), tuple(int(b) for b in bit_sizes))


@lru_cache(maxsize=512)
def _seal_primes(poly_modulus_degree: int, bit_sizes: tuple[int, ...]) -> tuple[int, ...]:
    step = 2 * poly_modulus_degree
    table: dict[int, list[int]] = {}
    for b in sorted(set(bit_sizes)):
        want, found, value = bit_sizes.count(b), [], 2**b - step + 1
        while len(found) < want and value > 2 ** (b - 1):
            if is_prime(value):
                found.append(value)
            value -= step
        if len(found) < want:
            raise ConfigurationError(
                f"coeff_mod_bit_sizes asks for {want} primes of {b} bits, but only {len(found)} "
                f"{b}-bit primes are = 1 mod 2N = {step} (SEAL needs that for "
                f"poly_modulus_degree={poly_modulus_degree}); use fewer {b}-bit primes, larger "
                "bit sizes or a smaller poly_modulus_degree"
            )
        table[b] = found
    return tuple(table[b].pop() for b in bit_sizes)
