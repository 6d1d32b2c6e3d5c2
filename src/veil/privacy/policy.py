"""Release policies checked before anything is revealed.

The minimum-cohort rule (one definition, used by every backend): a release goes to a set of
recipients; for **every** recipient, the rows contributed by the *other* parties must number at
least ``min_cohort``. A recipient that holds ``n_r`` of the ``N`` rows knows its own rows, so
what it learns about everyone else rests on ``N - n_r`` rows only: party 0 with 9 rows and
party 1 with 1 row give ``N = 10`` but only 1 row from party 0's point of view, and it would
recover that row exactly. A recipient that contributed nothing (a key holder, an analyst, the
public) needs ``N >= min_cohort``. The counts come from the protocol (the decrypted count
aggregate, or shares), each recipient's own count from its own data — never from another
party's claim. Under DP the (noisy) count released by the protocol is used.

The check runs before any value is decrypted or opened. It does not stop *differencing* (two
exact releases whose row sets differ by one row reveal that row); that is the job of the
ledger's exact-release limit (:meth:`veil.privacy.BudgetLedger.record_exact`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veil.errors import ConfigurationError, PolicyViolation

__all__ = ["ReleasePolicy", "DEFAULT_MIN_COHORT", "rows_from_others", "plain"]

DEFAULT_MIN_COHORT = 10


def plain(value: Any) -> str:
    """``repr`` for messages, with numpy scalars shown as plain numbers (``5``, not
    ``np.int64(5)``) and arrays as lists."""
    if hasattr(value, "tolist") and callable(value.tolist):
        try:
            return repr(value.tolist())
        except (TypeError, ValueError):
            pass
    return repr(value)


def rows_from_others(total_rows: float, own_rows: float = 0.0) -> float:
    """Rows the recipient did not contribute itself: ``total_rows - own_rows``."""
    return float(total_rows) - float(own_rows)


def _fmt(rows: float) -> str:
    return f"{float(rows):g}"


@dataclass(frozen=True)
class ReleasePolicy:
    """Minimum cohort: refuse any release in which some recipient would learn an aggregate over
    fewer than ``min_cohort`` rows contributed by *other* parties (default 10).

    ``min_cohort=1`` switches the rule off (pass it by name, deliberately).
    """

    min_cohort: int = DEFAULT_MIN_COHORT

    def __post_init__(self) -> None:
        k = self.min_cohort
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ConfigurationError(f"min_cohort must be an integer >= 1, got {plain(k)}")
        object.__setattr__(self, "min_cohort", int(k))

    def allows(self, total_rows: float, own_rows: float = 0.0) -> bool:
        """The rule for one recipient holding ``own_rows`` of the ``total_rows``."""
        others = rows_from_others(total_rows, own_rows)
        return math.isfinite(others) and others >= self.min_cohort

    def check_cohort(self, rows: float, *, what: str = "aggregate", own_rows: float = 0.0,
                     recipient: str = "the recipient") -> None:
        """Raise :class:`PolicyViolation` unless ``rows - own_rows >= min_cohort``.

        ``rows`` is the total (possibly noisy) row count of the release, ``own_rows`` the rows
        the recipient contributed itself (0 for a recipient holding no rows).
        """
        if self.allows(rows, own_rows):
            return
        if own_rows:
            raise PolicyViolation(
                f"refusing to release {what}: {recipient} would learn an aggregate over "
                f"{_fmt(rows_from_others(rows, own_rows))} rows of other parties (it holds "
                f"{_fmt(own_rows)} of the {_fmt(rows)}); the minimum cohort is {self.min_cohort} "
                "rows from parties other than each recipient; pool more data (or lower "
                "min_cohort if your policy allows)")
        raise PolicyViolation(
            f"refusing to release {what} over {_fmt(rows)} rows: the minimum cohort is "
            f"{self.min_cohort}; pool more data (or lower min_cohort if your policy allows)"
        )

    def check_recipients(self, rows: float, own_rows: Sequence[float], *,
                         what: str = "aggregate", outsider: bool = True) -> None:
        """The rule for every recipient: each party ``i`` (holding ``own_rows[i]``) and, with
        ``outsider``, a recipient holding no rows (key holder, analyst). Raises
        :class:`PolicyViolation` naming the first recipient that fails."""
        if outsider:
            self.check_cohort(rows, what=what)
        for i, mine in enumerate(own_rows):
            self.check_cohort(rows, what=what, own_rows=float(mine), recipient=f"party {i}")
