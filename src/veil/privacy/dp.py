"""Declaring a differentially private release and calibrating its noise.

A DP release in Veil perturbs *sufficient statistics* (count, column sums, sums of products,
histogram counts) inside the protocol, before anything is revealed; means, variances,
correlations and regression coefficients are post-processing of those noisy values and cost
nothing extra. Values are clipped to the declared ``bounds`` inside the protocol, so the
sensitivities below hold whatever the data are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from veil.errors import ConfigurationError
from veil.privacy.mechanisms import (
    MECHANISMS,
    NoiseGroup,
    gaussian_sigma2,
    laplace_scale,
    rho_for,
)
from veil.privacy.policy import plain

__all__ = ["DPConfig", "Block"]

Bounds = tuple[float, float]


@dataclass(frozen=True)
class Block:
    """One block of an integer query vector with its sensitivities in *real* units."""

    name: str
    size: int
    l1: float
    l2: float


def _check_bounds(name: str, value: Any) -> Bounds:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"bounds for {name!r} must be a pair (low, high), got {plain(value)}"
        ) from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigurationError(
            f"bounds for {name!r} must be finite with low < high, got ({lo!r}, {hi!r})"
        )
    return lo, hi


@dataclass(frozen=True)
class DPConfig:
    """One differentially private release.

    ``bounds`` is either one ``(low, high)`` pair for every column or a mapping
    ``column -> (low, high)``. Values outside are clipped to the bounds inside the protocol.
    ``mechanism="laplace"`` gives pure ``epsilon``-DP; ``"gaussian"`` gives
    ``(epsilon, delta)``-DP (through zCDP) and needs ``0 < delta < 1``.
    Neighbouring datasets differ by adding or removing one row.
    """

    epsilon: float
    bounds: Bounds | Mapping[str, Bounds]
    delta: float = 0.0
    mechanism: str = "laplace"

    def __post_init__(self) -> None:
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (
            math.isfinite(eps) and eps > 0
        ):
            raise ConfigurationError(f"epsilon must be a finite number > 0, got {plain(eps)}")
        object.__setattr__(self, "epsilon", float(eps))
        if isinstance(self.delta, bool) or not isinstance(self.delta, numbers.Real):
            raise ConfigurationError(f"delta must be a number, got {plain(self.delta)}")
        object.__setattr__(self, "delta", float(self.delta))
        if self.mechanism not in MECHANISMS:
            raise ConfigurationError(
                f"unknown DP mechanism {self.mechanism!r}; choose one of {MECHANISMS}"
            )
        if self.mechanism == "gaussian":
            rho_for(float(eps), self.delta)  # validates delta
        elif self.delta != 0.0:
            raise ConfigurationError(
                f"mechanism='laplace' is pure epsilon-DP; got delta={plain(self.delta)}. Pass "
                "delta=0 (default) or mechanism='gaussian'"
            )
        if isinstance(self.bounds, Mapping):
            for col, b in self.bounds.items():
                _check_bounds(str(col), b)
        else:
            _check_bounds("every column", self.bounds)

    def cost(self) -> tuple[float, float]:
        """(ε, δ) this release spends."""
        return float(self.epsilon), float(self.delta)

    def bounds_for(self, columns: Sequence[str]) -> list[Bounds]:
        """Per-column clipping bounds, in ``columns`` order."""
        if not isinstance(self.bounds, Mapping):
            pair = _check_bounds("every column", self.bounds)
            return [pair for _ in columns]
        missing = [c for c in columns if c not in self.bounds]
        if missing:
            raise ConfigurationError(
                f"DP release needs bounds for every column; missing {missing}; pass "
                "bounds={column: (low, high), ...}"
            )
        return [_check_bounds(c, self.bounds[c]) for c in columns]

    def calibrate(self, blocks: Sequence[Block], *, frac_bits: int) -> list[NoiseGroup]:
        """Noise groups for an integer query in units of ``2**-frac_bits``.

        The budget is split evenly over the blocks. Sensitivities are converted to integer units
        and rounded up, plus one unit per entry for the rounding of the statistic itself.
        """
        if not blocks:
            return []
        k = len(blocks)
        unit = 2.0**frac_bits
        groups: list[NoiseGroup] = []
        if self.mechanism == "laplace":
            for b in blocks:
                l1 = Fraction(math.ceil(b.l1 * unit) + b.size)
                groups.append(NoiseGroup(b.name, b.size, "laplace",
                                         laplace_scale(l1, self.epsilon / k)))
        else:
            rho = rho_for(float(self.epsilon), self.delta) / k
            for b in blocks:
                l2 = Fraction(math.ceil(b.l2 * unit + math.sqrt(b.size)))
                groups.append(NoiseGroup(b.name, b.size, "gaussian", gaussian_sigma2(l2, rho)))
        return groups
