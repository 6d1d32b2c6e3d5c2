"""Client-level differential privacy of federated averaging (:func:`veil.fl.train_fedavg`).

:class:`FederatedDP` declares it: every client clips its model delta to L2 norm ``l2_clip`` and
adds Gaussian noise (:func:`~veil.privacy.mechanisms.sample_gaussian`) of standard deviation
:meth:`FederatedDP.noise_std` ``= noise_multiplier * l2_clip / sqrt(t - 1)`` (t = the secure
aggregation threshold), so in any aggregate of at least t survivors the *other* clients' noise
alone has standard deviation at least ``noise_multiplier * l2_clip``. Clients take part with
probability ``sample_rate`` (Poisson sampling); the budget spent is tracked by
:meth:`FederatedDP.accountant` (:class:`~veil.privacy.accountant.RDPAccountant`) at ``delta``.

Not to be confused with :class:`veil.privacy.DPConfig`, one differentially private statistics
release (epsilon, delta, mechanism, bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from veil.errors import ConfigurationError
from veil.privacy.accountant import RDPAccountant

__all__ = ["FederatedDP"]


@dataclass(frozen=True)
class FederatedDP:
    """Client-level DP: L2 clipping of each delta and distributed Gaussian noise."""

    l2_clip: float
    noise_multiplier: float
    delta: float = 1e-5
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not (self.l2_clip > 0 and self.noise_multiplier > 0 and 0 < self.delta < 1
                and 0 < self.sample_rate <= 1):
            raise ConfigurationError(
                f"invalid DP parameters {self}; need l2_clip > 0, noise_multiplier > 0, "
                "0 < delta < 1 and 0 < sample_rate <= 1"
            )

    def noise_std(self, threshold: int) -> float:
        """Standard deviation of one client's noise when ``threshold`` clients must survive:
        the t - 1 others that always survive with any target client carry enough noise."""
        return self.noise_multiplier * self.l2_clip / math.sqrt(max(1, threshold - 1))

    def accountant(self) -> RDPAccountant:
        """A fresh accountant for this mechanism (no rounds spent yet)."""
        return RDPAccountant(self.noise_multiplier, self.sample_rate)
