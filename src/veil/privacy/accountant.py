"""Renyi-DP accounting of the (Poisson-subsampled) Gaussian mechanism, as used by federated
averaging (:class:`~veil.privacy.federated.FederatedDP`): :class:`RDPAccountant` composes rounds
and converts the total to (epsilon, delta). The noise itself comes from
:func:`veil.privacy.mechanisms.sample_gaussian`.

Accounting (Mironov 2017; Mironov, Talwar, Zhang 2019): with sampling rate q and noise multiplier
sigma, for integer orders alpha >= 2

    RDP(alpha) = 1/(alpha-1) * log sum_{k=0}^{alpha} C(alpha,k) (1-q)^(alpha-k) q^k
                 * exp((k^2 - k) / (2 sigma^2))

which equals alpha / (2 sigma^2) at q = 1. Rounds compose additively; the conversion to
(epsilon, delta) is Canonne, Kamath, Steinke 2020 (Prop. 12):
epsilon = min_alpha RDP(alpha) + log((alpha-1)/alpha) - (log delta + log alpha) / (alpha - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from veil.errors import ConfigurationError

__all__ = ["sampled_gaussian_rdp", "rdp_to_epsilon", "RDPAccountant", "ORDERS"]

ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512, 1024)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def sampled_gaussian_rdp(q: float, noise_multiplier: float, order: int) -> float:
    """RDP at integer ``order`` of one step of the Poisson-subsampled Gaussian mechanism."""
    if not 0 < q <= 1:
        raise ConfigurationError(f"sampling rate must be in (0, 1], got {q}")
    if not noise_multiplier > 0:
        raise ConfigurationError(f"noise multiplier must be positive, got {noise_multiplier}")
    a, s2 = int(order), noise_multiplier**2
    if q == 1.0:
        return a / (2 * s2)
    terms = [
        math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)
        + k * math.log(q) + (a - k) * math.log1p(-q) + (k * k - k) / (2 * s2)
        for k in range(a + 1)
    ]
    return _logsumexp(terms) / (a - 1)


def rdp_to_epsilon(rdp: dict[int, float], delta: float) -> tuple[float, int]:
    """Smallest epsilon (and the order achieving it) for the RDP curve ``rdp`` at ``delta``."""
    if not 0 < delta < 1:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    best = (math.inf, 0)
    for a, r in rdp.items():
        eps = r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, (max(eps, 0.0), a))
    return best


@dataclass
class RDPAccountant:
    """Accumulates RDP over rounds of the subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float = 1.0
    rounds: int = 0
    _per_round: dict[int, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._per_round = {a: sampled_gaussian_rdp(self.sample_rate, self.noise_multiplier, a)
                           for a in ORDERS}

    def step(self, count: int = 1) -> None:
        self.rounds += count

    def epsilon(self, delta: float) -> float:
        if self.rounds == 0:
            return 0.0
        total = {a: self.rounds * r for a, r in self._per_round.items()}
        return rdp_to_epsilon(total, delta)[0]
