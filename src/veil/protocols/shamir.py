"""t-of-n Shamir secret sharing over the prime field GF(p), p = 2**521 - 1.

Used by secure aggregation to share 256-bit seeds and X25519 secret keys, so the field is far
larger than any secret (a Mersenne prime keeps the arithmetic simple; a share is 66 bytes).

What is revealed to whom: any ``threshold`` shares determine the secret; any ``threshold - 1``
shares are jointly uniform over the field and independent of the secret (information-theoretic),
because the ``threshold - 1`` non-constant coefficients come from :func:`secrets.randbelow`.

Shares are plain ``(x, y)`` integers; ``x`` is a public, non-zero evaluation point (secure
aggregation uses ``client_id + 1``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from veil.errors import ConfigurationError

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "split",
    "reconstruct",
    "lagrange_at_zero",
    "share_to_bytes",
    "share_from_bytes",
]

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)


def _check_points(xs: Iterable[int]) -> list[int]:
    points = list(xs)
    for x in points:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < PRIME:
            raise ConfigurationError(
                f"Shamir evaluation point {x!r} is invalid; points must be integers in "
                "[1, p - 1] (0 is where the secret lives)"
            )
    if len(set(points)) != len(points):
        raise ConfigurationError(
            f"Shamir evaluation points must be distinct, got {sorted(points)}; use one point "
            "per shareholder"
        )
    return points


def split(secret: int, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` (an integer in ``[0, p)``) so that any ``threshold`` of the points in
    ``xs`` reconstruct it; returns ``{x: y}``.

    The polynomial has degree ``threshold - 1``; its coefficients other than the secret are
    drawn from the OS CSPRNG.
    """
    points = _check_points(xs)
    if not isinstance(threshold, int) or not 1 <= threshold <= len(points):
        raise ConfigurationError(
            f"threshold {threshold!r} must be between 1 and the number of shareholders "
            f"({len(points)})"
        )
    if not isinstance(secret, int) or not 0 <= secret < PRIME:
        raise ConfigurationError(
            "Shamir secret must be an integer in [0, 2**521 - 1); convert byte strings with "
            "int.from_bytes(seed, 'big') (at most 65 bytes)"
        )
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def lagrange_at_zero(xs: Sequence[int]) -> dict[int, int]:
    """Lagrange coefficients ``l_i`` with ``f(0) = sum_i l_i f(x_i)`` for the points ``xs``.

    Compute once and reuse them when many secrets are reconstructed from the same shareholders.
    """
    points = _check_points(xs)
    if not points:
        raise ConfigurationError("need at least one share to reconstruct a secret")
    coeffs: dict[int, int] = {}
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        coeffs[xi] = num * pow(den, -1, PRIME) % PRIME
    return coeffs


def reconstruct(
    shares: Mapping[int, int], *, threshold: int, coefficients: Mapping[int, int] | None = None
) -> int:
    """Recover the secret from at least ``threshold`` shares ``{x: y}``.

    Exactly ``threshold`` shares are used (the smallest points); ``coefficients`` may pass
    precomputed :func:`lagrange_at_zero` values for those points. With fewer than ``threshold``
    shares a :class:`~veil.errors.ConfigurationError` is raised: the secret is undetermined.
    """
    if len(shares) < threshold:
        raise ConfigurationError(
            f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret; collect at least "
            f"{threshold}"
        )
    used = sorted(shares)[:threshold]
    if coefficients is None or set(coefficients) != set(used):
        coefficients = lagrange_at_zero(used)
    total = 0
    for x in used:
        y = shares[x]
        if not isinstance(y, int) or not 0 <= y < PRIME:
            raise ConfigurationError(f"share value at x={x} is outside the field [0, 2**521 - 1)")
        total += coefficients[x] * y
    return total % PRIME


def share_to_bytes(y: int) -> bytes:
    """Fixed-width (66-byte, big-endian) encoding of a share value."""
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of :func:`share_to_bytes`; rejects values outside the field."""
    if len(data) != SHARE_BYTES:
        raise ConfigurationError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ConfigurationError("share value is outside the field [0, 2**521 - 1)")
    return y
