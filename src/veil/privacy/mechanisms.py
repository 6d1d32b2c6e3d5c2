"""Differential-privacy noise, all from the operating system's CSPRNG: exact discrete Laplace and
discrete Gaussian samplers (statistics releases) and a float Gaussian (federated averaging).

The discrete samplers draw with :mod:`secrets` using only exact integer and rational arithmetic
(Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020,
Algorithms 1-3). No floating-point sampling happens in them, so the attacks on textbook
floating-point Laplace samplers (Mironov 2012) do not apply: a released value
is ``integer / 2**frac_bits`` where both the statistic and the noise are integers in units of
``2**-frac_bits`` (the fixed-point grid of the backend), and the sensitivity is rounded *up* to
that grid (plus one unit for the rounding of the statistic itself).

Timing: the rejection samplers' running time grows with ``|z|`` (a draw of 1000 takes a few
times longer than a draw of 10). Protocols therefore draw *all* the noise they will use before
their first message (``stats_mpc.run_release`` draws every round of the DP order-statistic
search up front), so no per-query timing is visible to the other parties.

Calibration:

* Laplace, pure ``epsilon``-DP: scale ``b = Δ₁ / epsilon`` (``P(z) ∝ exp(-|z| / b)``).
* Gaussian, ``(epsilon, delta)``-DP via zero-concentrated DP: the discrete Gaussian with variance
  parameter ``σ²`` is ``Δ₂² / (2σ²)``-zCDP (CKS20, Thm. 4), and ``ρ``-zCDP implies
  ``(ρ + 2·sqrt(ρ·ln(1/δ)), δ)``-DP (Bun and Steinke 2016); :func:`rho_for` inverts that bound.

:func:`sample_gaussian` draws float64 N(0, std²) vectors from ``os.urandom`` with the Box-Muller
transform on 53-bit uniforms, for the client-side noise of federated averaging
(:class:`~veil.privacy.federated.FederatedDP`). Floating-point caveat: the samples are IEEE
doubles computed with ``log``/``sqrt``/``cos``; their low-order bits are not exactly Gaussian, and
floating-point noise added to floating-point values can in principle leak through the pattern of
representable results (Mironov, CCS 2012). There the noisy update is then quantized to a grid
whose step (about 2 * clip / 2**32 * num_clients) is far coarser than the float64 spacing of the
noise, which removes the low-order bits before anything leaves the client; a discrete Gaussian on
the integer grid would remove the caveat entirely. numpy is imported on first use only.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from veil.errors import ConfigurationError

__all__ = [
    "MECHANISMS",
    "NoiseGroup",
    "sample_discrete_laplace",
    "sample_discrete_gaussian",
    "laplace_scale",
    "gaussian_sigma2",
    "rho_for",
    "sample_noise",
    "sample_gaussian",
]

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS: tuple[str, ...] = ("laplace", "gaussian")
_ONE = Fraction(1)


def _bernoulli(p: Fraction) -> bool:
    """Exact Bernoulli(p) for a rational 0 <= p <= 1."""
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp(gamma: Fraction) -> bool:
    """Exact Bernoulli(exp(-gamma)) for a rational gamma >= 0 (CKS20, Algorithm 1)."""
    while gamma > 1:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if not _bernoulli_exp(_ONE):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _as_fraction(value: float | Fraction | int, name: str) -> Fraction:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    frac = Fraction(value)
    if frac <= 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")
    return frac


def sample_discrete_laplace(scale: float | Fraction | int) -> int:
    """One draw of the discrete Laplace distribution ``P(z) ∝ exp(-|z| / scale)`` on the integers.

    Exact (rational arithmetic, CKS20 Algorithm 2); randomness from :mod:`secrets`.
    """
    b = _as_fraction(scale, "scale")
    t, s = b.numerator, b.denominator  # b = t / s
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(_ONE):
            v += 1
        y = (u + t * v) // s
        negative = secrets.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def sample_discrete_gaussian(sigma2: float | Fraction | int) -> int:
    """One draw of the discrete Gaussian ``P(z) ∝ exp(-z² / (2·sigma2))`` on the integers.

    Exact (CKS20 Algorithm 3); randomness from :mod:`secrets`.
    """
    s2 = _as_fraction(sigma2, "sigma2")
    t = math.isqrt(s2.numerator // s2.denominator) + 1
    while True:
        y = sample_discrete_laplace(t)
        gamma = (abs(y) - s2 / t) ** 2 / (2 * s2)
        if _bernoulli_exp(gamma):
            return y


def laplace_scale(sensitivity_l1: float | Fraction | int, epsilon: float) -> Fraction:
    """Discrete Laplace scale giving ``epsilon``-DP for an integer query of L1 sensitivity Δ₁."""
    return _as_fraction(sensitivity_l1, "sensitivity") / _as_fraction(epsilon, "epsilon")


def rho_for(epsilon: float, delta: float) -> float:
    """Largest zCDP parameter ρ whose (ε, δ) conversion stays within ``epsilon`` and ``delta``."""
    _as_fraction(epsilon, "epsilon")
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(
            f"the Gaussian mechanism needs 0 < delta < 1, got delta={delta!r}; pass e.g. "
            "delta=1e-6 (or use mechanism='laplace' for pure epsilon-DP)"
        )
    log_term = math.log(1.0 / delta)
    root = math.sqrt(log_term + epsilon) - math.sqrt(log_term)
    return root * root * (1.0 - 1e-9)  # round down: never spend more than asked


def gaussian_sigma2(sensitivity_l2: float | Fraction | int, rho: float) -> Fraction:
    """Discrete Gaussian variance parameter σ² giving ρ-zCDP for L2 sensitivity Δ₂."""
    d2 = _as_fraction(sensitivity_l2, "sensitivity")
    r = _as_fraction(rho, "rho")
    sigma2 = d2 * d2 / (2 * r)
    # round up to a short fraction (noise only grows; keeps the sampler's integers small)
    return Fraction(math.ceil(sigma2 * 2**20), 2**20)


@dataclass(frozen=True)
class NoiseGroup:
    """Noise for one block of an integer query vector (e.g. all column sums).

    ``size`` entries receive independent noise: discrete Laplace with ``scale`` (mechanism
    ``"laplace"``) or discrete Gaussian with variance parameter ``scale`` (``"gaussian"``).
    """

    name: str
    size: int
    mechanism: Mechanism
    scale: Fraction

    def std(self) -> float:
        """Standard deviation of one noise entry (in integer units), for reporting."""
        if self.mechanism == "laplace":
            return math.sqrt(2.0) * float(self.scale)
        return math.sqrt(float(self.scale))


def sample_noise(groups: Sequence[NoiseGroup]) -> list[int]:
    """Fresh integer noise for a query vector laid out as ``groups`` (concatenated in order)."""
    out: list[int] = []
    for g in groups:
        draw = sample_discrete_laplace if g.mechanism == "laplace" else sample_discrete_gaussian
        out.extend(draw(g.scale) for _ in range(g.size))
    return out


def sample_gaussian(count: int, *, std: float = 1.0) -> Any:
    """``count`` samples of N(0, std**2) from ``os.urandom`` (Box-Muller), as float64."""
    import numpy as np

    if count < 0 or not (math.isfinite(std) and std >= 0):
        raise ConfigurationError(f"need count >= 0 and a finite std >= 0, got {count}, {std}")
    pairs = (count + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype="<u8").reshape(2, pairs)
    # 53-bit uniforms in (0, 1]: never 0, so log() is finite.
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u[0]))
    angle = 2.0 * math.pi * u[1]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return z * std
