"""Per-dataset privacy-budget ledger: refuses any release that would overspend.

Budgets compose additively (basic sequential composition of (ε, δ)-DP). The ledger is charged
*before* a protocol starts, so a release that fails half-way still counts as spent (the safe
direction). With a ``path`` the ledger persists as JSON lines, one charge per line, under an
exclusive file lock, so several processes (or runs) share one budget.

**Keys.** A dataset is identified by its *declared name* (``dataset=`` / ``dataset_names=``;
never a file path or a position, which the caller could spell differently to get a fresh
budget) and, when the caller supplies one, by a *content fingerprint* (SHA-256 of the
canonicalised table, :func:`veil.stats._data.fingerprint`). A charge counts against a release
when either matches: the same content under a new name shares the old name's budget.

**Exact (non-DP) releases.** Two exact releases whose row sets differ by one row reveal that
row by subtraction (differencing). With a ledger in use, every exact release is recorded too,
and a dataset (by name or fingerprint) may appear in at most ``max_exact`` of them (default 1):
once a dataset was released exactly, later releases that include it must be differentially
private. Ask for every exact statistic you need in one release.
"""

from __future__ import annotations

import fcntl
import json
import math
import numbers
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from veil.errors import ConfigurationError, PolicyViolation, PrivacyBudgetExceeded
from veil.privacy.policy import plain

__all__ = ["BudgetLedger", "Charge"]

_TOL = 1e-12


@dataclass(frozen=True)
class Charge:
    dataset: str
    epsilon: float
    delta: float
    statistic: str
    time: float
    fingerprint: str | None = None
    exact: bool = False  # a non-DP release (counted against ``max_exact``, spends no budget)


def _check_name(dataset: str) -> None:
    if not isinstance(dataset, str) or not dataset:
        raise ConfigurationError(
            f"dataset must be a non-empty declared name (e.g. 'clinic-2024'), got {dataset!r}")


def _check_nonneg(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {plain(value)}")
    return float(value)


class BudgetLedger:
    """Tracks the (ε, δ) spent per dataset against a fixed total budget per dataset.

    Reveals nothing by itself; it is the data owner's own book-keeping.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, epsilon: float, delta: float = 0.0,
        max_exact: int = 1,
    ) -> None:
        self.total_epsilon = _check_nonneg("epsilon budget", epsilon)
        self.total_delta = _check_nonneg("delta budget", delta)
        if self.total_delta >= 1:
            raise ConfigurationError(f"delta budget must be < 1, got {plain(delta)}")
        if isinstance(max_exact, bool) or not isinstance(max_exact, int) or max_exact < 0:
            raise ConfigurationError(
                f"max_exact (exact releases allowed per dataset) must be an integer >= 0, got "
                f"{max_exact!r}")
        self.max_exact = max_exact
        self.path = Path(path) if path is not None else None
        self._charges: list[Charge] = []
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._charges = self._read()

    # -- persistence -------------------------------------------------------------------------
    def _header(self) -> dict[str, float]:
        head = {"budget_epsilon": self.total_epsilon, "budget_delta": self.total_delta}
        if self.max_exact != 1:  # ledgers written before the limit existed used the default
            head["max_exact"] = self.max_exact
        return head

    def _read(self) -> list[Charge]:
        if self.path is None:
            return []
        lines = self.path.read_text().splitlines()
        charges: list[Charge] = []
        for no, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"privacy ledger {self.path} line {no} is not JSON; the ledger is corrupt "
                    "(restore it from a backup; never delete it to reset a budget)"
                ) from exc
            if no == 1:
                if obj != self._header():
                    raise ConfigurationError(
                        f"privacy ledger {self.path} was created with budget {obj}, but this "
                        f"ledger was opened with {self._header()}; open it with the same budget"
                    )
                continue
            charges.append(Charge(obj["dataset"], obj["epsilon"], obj["delta"],
                                  obj.get("statistic", ""), obj.get("time", 0.0),
                                  obj.get("fingerprint"), bool(obj.get("exact", False))))
        return charges

    # -- queries -----------------------------------------------------------------------------
    def _mine(self, dataset: str, fingerprint: str | None) -> list[Charge]:
        return [c for c in self._charges if c.dataset == dataset or (
            fingerprint is not None and c.fingerprint == fingerprint)]

    def spent(self, dataset: str, fingerprint: str | None = None) -> tuple[float, float]:
        """(ε, δ) already spent on ``dataset`` (charges under that name, or on that content)."""
        mine = self._mine(dataset, fingerprint)
        return (math.fsum(c.epsilon for c in mine), math.fsum(c.delta for c in mine))

    def exact_releases(self, dataset: str, fingerprint: str | None = None) -> int:
        """Exact (non-DP) releases recorded for ``dataset`` (by name, or on that content)."""
        return sum(1 for c in self._mine(dataset, fingerprint) if c.exact)

    def remaining(self, dataset: str, fingerprint: str | None = None) -> tuple[float, float]:
        """(ε, δ) still available for ``dataset``."""
        eps, delta = self.spent(dataset, fingerprint)
        return (max(0.0, self.total_epsilon - eps), max(0.0, self.total_delta - delta))

    def check_exact(self, dataset: str, fingerprint: str | None = None) -> None:
        """Raise :class:`PolicyViolation` if one more exact release of ``dataset`` would pass
        the limit ``max_exact`` (the differencing defence); records nothing."""
        _check_name(dataset)
        done = self.exact_releases(dataset, fingerprint)
        if done >= self.max_exact:
            raise PolicyViolation(
                f"dataset {dataset!r} (or the same content under another name) was already "
                f"released exactly {done} time(s), the limit of this ledger (max_exact="
                f"{self.max_exact}); a second exact release over changed rows would reveal "
                "them by subtraction: make this release differentially private (epsilon=..., "
                "bounds=...), or request every exact statistic in one release")

    def check(self, dataset: str, *, epsilon: float, delta: float = 0.0,
              fingerprint: str | None = None) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if charging would overspend; charges nothing."""
        _check_name(dataset)
        epsilon = _check_nonneg("epsilon", epsilon)
        delta = _check_nonneg("delta", delta)
        eps_spent, delta_spent = self.spent(dataset, fingerprint)
        if eps_spent + epsilon > self.total_epsilon + _TOL or (
            delta_spent + delta > self.total_delta + _TOL
        ):
            left_e, left_d = self.remaining(dataset, fingerprint)
            raise PrivacyBudgetExceeded(
                f"release on dataset {dataset!r} needs epsilon={epsilon:g}, delta={delta:g} but "
                f"only epsilon={left_e:g}, delta={left_d:g} of the budget "
                f"(epsilon={self.total_epsilon:g}, delta={self.total_delta:g}) is left; "
                "request less, or stop releasing from this dataset"
            )

    def charge(
        self, dataset: str, *, epsilon: float, delta: float = 0.0, statistic: str = "",
        fingerprint: str | None = None,
    ) -> Charge:
        """Spend (ε, δ) on ``dataset`` or raise :class:`PrivacyBudgetExceeded` (nothing spent).

        ``fingerprint`` (optional) is the content's fingerprint: earlier charges on the same
        content count against this one whatever their name."""
        return self._append(dataset, epsilon, delta, statistic, fingerprint, exact=False)

    def record_exact(self, dataset: str, *, statistic: str = "",
                     fingerprint: str | None = None) -> Charge:
        """Record an exact (non-DP) release of ``dataset`` or raise :class:`PolicyViolation`
        when the dataset already had ``max_exact`` of them (nothing recorded)."""
        return self._append(dataset, 0.0, 0.0, statistic, fingerprint, exact=True)

    def _append(self, dataset: str, epsilon: float, delta: float, statistic: str,
                fingerprint: str | None, *, exact: bool) -> Charge:
        _check_name(dataset)
        if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
            raise ConfigurationError(
                f"fingerprint must be a non-empty string or None, got {fingerprint!r}")

        def checked() -> Charge:
            if exact:
                self.check_exact(dataset, fingerprint)
            else:
                self.check(dataset, epsilon=epsilon, delta=delta, fingerprint=fingerprint)
            return Charge(dataset, float(epsilon), float(delta), statistic, time.time(),
                          fingerprint, exact)

        with self._lock:
            if self.path is None:
                entry = checked()
                self._charges.append(entry)
                return entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    fh.seek(0)
                    if fh.read(1) == "":
                        fh.write(json.dumps(self._header()) + "\n")
                    self._charges = self._read()  # another process may have charged meanwhile
                    entry = checked()
                    record = {k: v for k, v in entry.__dict__.items()
                              if not (k == "fingerprint" and v is None)
                              and not (k == "exact" and not v)}
                    fh.write(json.dumps(record, sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    self._charges.append(entry)
                    return entry
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
