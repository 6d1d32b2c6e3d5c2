"""Release policies checked before anything is revealed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from veil.errors import ConfigurationError, PolicyViolation

__all__ = ["ReleasePolicy", "DEFAULT_MIN_COHORT"]

DEFAULT_MIN_COHORT = 10


@dataclass(frozen=True)
class ReleasePolicy:
    """Minimum cohort: refuse any aggregate over fewer than ``min_cohort`` rows (default 10).

    ``min_cohort=1`` switches the rule off (pass it by name, deliberately).
    """

    min_cohort: int = DEFAULT_MIN_COHORT

    def __post_init__(self) -> None:
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, int) or (
            self.min_cohort < 1
        ):
            raise ConfigurationError(
                f"min_cohort must be an integer >= 1, got {self.min_cohort!r}"
            )

    def check_cohort(self, rows: float, *, what: str = "aggregate") -> None:
        """Raise :class:`PolicyViolation` when ``rows`` (possibly noisy) is below the minimum."""
        if not math.isfinite(rows) or rows < self.min_cohort:
            raise PolicyViolation(
                f"refusing to release {what} over {rows:g} rows: the minimum cohort is "
                f"{self.min_cohort}; pool more data (or lower min_cohort if your policy allows)"
            )
