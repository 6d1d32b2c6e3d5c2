"""Number theory behind Veil's Paillier: key generation, key checks, DJN randomness and CRT.

Everything here works on integers (``gmpy2.mpz``); encoding, vectors and error messages for users
live in :mod:`veil.he.paillier.keys`. All randomness comes from the operating system's CSPRNG
(``secrets`` / ``os.urandom``); nothing here uses :mod:`random`.

Fast paths (see ``docs/security/paillier.md`` for the full argument):

* **DJN short-exponent randomness.** Textbook Paillier hides a message with ``r^n mod n²`` for a
  uniform ``r`` in ``Z_n*``: one full-length exponentiation per ciphertext. Following Damgård,
  Jurik and Nielsen (*A generalization of Paillier's public-key system with applications to
  electronic voting*, IJIS 2010, the variant with ``h = −x² mod n``), we fix ``h_s = h^n mod n²``
  for a random ``x`` and use ``h_s^α`` with ``α`` uniform of ``⌈k/2⌉`` bits (``k`` = bits of n;
  rounded up to whole bytes). That is the exponent length of the DJN paper, under which the
  scheme stays semantically secure assuming DCR; it is 4× longer than the ``2κ = 256`` bits that
  the generic short-exponent argument (Pollard lambda needs ``2^(ℓ/2)`` steps) would need at
  κ = 128, so it keeps a wide margin. Since ``h_s`` is fixed, ``h_s^α`` uses a fixed-base table:
  with 8-bit windows it costs ``⌈k/16⌉`` multiplications mod n² (128 at k = 2048) instead of a
  ~2k-step exponentiation.
* **CRT.** The key holder computes the same randomness mod p² and q² (half-size numbers, a quarter
  of the cost per multiplication) and decrypts mod p² and q², exponentiating with the secret
  ``p − 1`` / ``q − 1`` through GMP's side-channel-silent ``mpz_powm_sec`` (``gmpy2.powmod_sec``).
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from collections.abc import Sequence
from typing import Any

import gmpy2
from gmpy2 import mpz

from veil.errors import UnsupportedOperationError

MIN_SECURE_BITS = 2048
MIN_INSECURE_BITS = 64
MAX_BITS = 8192
SMALL_PRIME_BOUND = 1 << 14
_PRIME_ROUNDS = 40
_LOAD_PRIME_ROUNDS = 25  # GMP runs BPSW first; extra Miller-Rabin rounds on top
_TABLE_MAX_BYTES = 64 * 1024 * 1024


@functools.cache
def small_primes_product() -> mpz:
    """Product of all primes below :data:`SMALL_PRIME_BOUND` (for a one-gcd trial division)."""
    sieve = bytearray([1]) * SMALL_PRIME_BOUND
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(SMALL_PRIME_BOUND) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    prod = mpz(1)
    for i, flag in enumerate(sieve):
        if flag:
            prod *= i
    return prod


def generate_prime(bits: int) -> mpz:
    """A uniformly random ``bits``-bit prime with its two top bits set (rejection sampling).

    Candidates come from :func:`secrets.randbits`; primality is Miller–Rabin (``gmpy2.is_prime``,
    40 rounds, plus GMP's own trial division). Unlike ``next_prime`` from a random start, rejection
    sampling has no bias towards primes that follow long gaps.
    """
    top = mpz(3) << (bits - 2)
    small = small_primes_product()
    while True:
        cand = mpz(secrets.randbits(bits)) | top | 1
        if gmpy2.gcd(cand, small) != 1:
            continue
        if gmpy2.is_prime(cand, _PRIME_ROUNDS):
            return cand


def generate_primes(bits: int) -> tuple[mpz, mpz]:
    """Two distinct primes whose product has exactly ``bits`` bits and gcd(n, φ(n)) = 1."""
    half = bits // 2
    while True:
        p = generate_prime(half)
        q = generate_prime(bits - half)
        n = p * q
        if p != q and n.bit_length() == bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            return p, q


def modulus_problem(n: int, *, allow_insecure: bool) -> tuple[str, bool] | None:
    """Why ``n`` is not an acceptable Paillier modulus, or ``None`` when it is.

    Returns ``(reason, insecure_only)``; ``insecure_only`` is true when the only problem is a size
    below 2048 bits (which ``allow_insecure=True`` accepts down to 64 bits).
    """
    if isinstance(n, bool) or not isinstance(n, (int, type(mpz(0)))):
        return f"the modulus must be an int, got {type(n).__name__}", False
    n = mpz(n)
    bits = n.bit_length()
    if n <= 1 or bits > MAX_BITS:
        return f"modulus of {bits} bits is outside 64..{MAX_BITS} bits", False
    if bits < MIN_INSECURE_BITS:
        return f"modulus of {bits} bits is far too small (minimum {MIN_INSECURE_BITS})", False
    if bits < MIN_SECURE_BITS and not allow_insecure:
        return (
            f"modulus of {bits} bits gives less than 112-bit security; use at least "
            f"{MIN_SECURE_BITS} bits (3072 for 128-bit) or pass allow_insecure=True",
            True,
        )
    if n % 2 == 0:
        return "modulus is even; a Paillier modulus is the product of two odd primes", False
    if gmpy2.gcd(n, small_primes_product()) != 1:
        return f"modulus has a prime factor below {SMALL_PRIME_BOUND}", False
    if gmpy2.is_square(n):
        return "modulus is a perfect square; p and q must differ", False
    if gmpy2.is_strong_prp(n, 2):  # one exponentiation; every prime passes it
        return "modulus is prime; it must be the product of two primes", False
    return None


def prime_pair_problem(p: int, q: int) -> str | None:
    """Why ``(p, q)`` is not a valid Paillier secret key, or ``None``."""
    p, q = mpz(p), mpz(q)
    if p == q:
        return "p and q are equal"
    # cheap screen first (one exponentiation each), so a composite is refused quickly
    for name, v in (("p", p), ("q", q)):
        if v < SMALL_PRIME_BOUND or not gmpy2.is_strong_prp(v, 2):
            return f"{name} is not a prime above {SMALL_PRIME_BOUND}"
    for name, v in (("p", p), ("q", q)):
        if not gmpy2.is_prime(v, _LOAD_PRIME_ROUNDS):
            return f"{name} is not a prime"
    if gmpy2.gcd(p * q, (p - 1) * (q - 1)) != 1:
        return "gcd(n, (p-1)(q-1)) != 1"
    return None


class FixedBaseTable:
    """``base^e mod modulus`` for exponents given as little-endian bytes, by table look-up.

    Row ``i`` holds ``base^(d·2^(w·i))`` for every digit ``d`` < 2^w, so an exponent of ``r`` w-bit
    digits costs at most ``r − 1`` multiplications. ``w`` is 8 (one digit per byte) unless the table
    would exceed 64 MiB, then 4. Building costs ``r·(2^w − 2)`` multiplications, once per key.
    """

    def __init__(self, base: int, modulus: int, exp_bytes: int) -> None:
        self.modulus = m = mpz(modulus)
        self.exp_bytes = exp_bytes
        entry = (m.bit_length() + 7) // 8 + 32
        self.window = 8 if exp_bytes * 255 * entry <= _TABLE_MAX_BYTES else 4
        w = self.window
        rows = exp_bytes * (8 // w)
        b = mpz(base) % m
        table: list[list[mpz]] = []
        for _ in range(rows):
            row = [mpz(1), b]
            x = b
            for _ in range((1 << w) - 2):
                x = x * b % m
                row.append(x)
            table.append(row)
            b = x * b % m
        self.rows = table

    def pow(self, exp: bytes) -> mpz:
        """``base^int.from_bytes(exp, "little") mod modulus``; ``len(exp)`` must be exp_bytes."""
        m = self.modulus
        acc = mpz(1)
        if self.window == 8:
            for row, d in zip(self.rows, exp):
                if d:
                    acc = acc * row[d] % m
            return acc
        rows = iter(self.rows)
        for byte in exp:
            lo, hi = next(rows), next(rows)
            if byte & 15:
                acc = acc * lo[byte & 15] % m
            if byte >> 4:
                acc = acc * hi[byte >> 4] % m
        return acc


def djn_exponent_bytes(n_bits: int) -> int:
    """Bytes of the DJN short exponent α: ⌈n_bits/2⌉ bits, rounded up to whole bytes."""
    return ((n_bits + 1) // 2 + 7) // 8


def random_unit(n: int) -> mpz:
    """A uniform element of Z_n* from the CSPRNG."""
    while True:
        x = mpz(secrets.randbelow(n - 1) + 1)
        if gmpy2.gcd(x, n) == 1:
            return x


def djn_base(n: int, x: int | None = None) -> mpz:
    """``h_s = (−x²)^n mod n²`` for a fresh random ``x`` in Z_n* (or the given one, for tests)."""
    n = mpz(n)
    x = random_unit(n) if x is None else mpz(x)
    h = (-x * x) % n
    return gmpy2.powmod(h, n, n * n)


def raw_encrypt(n: int, m: int, r: int) -> mpz:
    """Textbook Paillier with g = n + 1: ``(1 + m·n) · r^n mod n²`` (reference, used by tests)."""
    n = mpz(n)
    n2 = n * n
    return (1 + (mpz(m) % n) * n) * gmpy2.powmod(r, n, n2) % n2


class SecretNoPickle:
    """Refuses pickle, copy and deepcopy: they would hand out p and q without an explicit
    ``serialize(secret=...)`` (sealed) or ``serialize(expose_secret=True)``. Parallel workers
    get the integers they need explicitly (``_paillier_parallel``)."""

    __slots__ = ()

    def __reduce__(self) -> Any:
        raise UnsupportedOperationError(
            f"{self!r} holds the secret factors p and q and cannot be pickled or copied; send "
            "its public_key, or store it sealed with serialize(secret=Secret.passphrase(...)) "
            "or save(path, secret)")


class CrtKey:
    """Private-key arithmetic mod p² and q² (decryption, and CRT encryption randomness)."""

    def __init__(self, p: int, q: int) -> None:
        p, q = mpz(p), mpz(q)
        if p > q:
            p, q = q, p
        self.p, self.q, self.n = p, q, p * q
        self.n2 = self.n * self.n
        self.p2, self.q2 = p * p, q * q
        g = self.n + 1
        self.hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self.p2) - 1) // p, p)
        self.hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self.q2) - 1) // q, q)
        self.p_inv_q = gmpy2.invert(p, q)
        self.p2_inv_q2 = gmpy2.invert(self.p2, self.q2)
        self._tables: tuple[mpz, FixedBaseTable, FixedBaseTable] | None = None

    def __reduce__(self) -> Any:
        raise UnsupportedOperationError(
            "a Paillier CRT key holds the secret factors p and q and cannot be pickled or copied")

    def _half(self, cs: Sequence[mpz], which: str) -> list[mpz]:
        pr, pr2, h = (self.p, self.p2, self.hp) if which == "p" else (self.q, self.q2, self.hq)
        e = pr - 1  # secret: exponentiate with GMP's side-channel-silent mpz_powm_sec
        return [(gmpy2.powmod_sec(c % pr2, e, pr2) - 1) // pr * h % pr for c in cs]

    def decrypt(self, cs: Sequence[mpz]) -> list[mpz]:
        """Plaintexts in ``[0, n)`` of the ciphertexts ``cs`` (each already checked in range).

        Both halves are always computed: answering from the p half alone (tempting when the
        plaintext is known to be small) would hand out ``m mod p`` for a crafted ciphertext and so
        a factor of n.
        """
        cs = list(cs)
        mps, mqs = self._half(cs, "p"), self._half(cs, "q")
        p, q, pinv = self.p, self.q, self.p_inv_q
        return [mp + p * ((mq - mp) * pinv % q) for mp, mq in zip(mps, mqs)]

    def randomizers(self, h_s: int, count: int, data: bytes | None = None) -> list[mpz]:
        """``count`` DJN randomizers ``h_s^α mod n²`` computed mod p² and q² and joined by CRT.

        ``data`` (tests only) fixes the exponents; by default they come from ``os.urandom``.
        """
        exp_bytes = djn_exponent_bytes(self.n.bit_length())
        if self._tables is None or self._tables[0] != h_s:
            self._tables = (
                mpz(h_s),
                FixedBaseTable(h_s, self.p2, exp_bytes),
                FixedBaseTable(h_s, self.q2, exp_bytes),
            )
        _, tp, tq = self._tables
        p2, q2, inv = self.p2, self.q2, self.p2_inv_q2
        out = []
        data = os.urandom(exp_bytes * count) if data is None else data
        for i in range(count):
            alpha = data[i * exp_bytes : (i + 1) * exp_bytes]
            rp, rq = tp.pow(alpha), tq.pow(alpha)
            out.append(rp + p2 * ((rq - rp) * inv % q2))
        return out
