"""Per-dataset privacy-budget ledger: refuses any release that would overspend.

Budgets compose additively (basic sequential composition of (ε, δ)-DP). The ledger is charged
*before* a protocol starts, so a release that fails half-way still counts as spent (the safe
direction). With a ``path`` the ledger persists as JSON lines, one charge per line, under an
exclusive file lock, so several processes (or runs) share one budget.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from veil.errors import ConfigurationError, PrivacyBudgetExceeded

__all__ = ["BudgetLedger", "Charge"]

_TOL = 1e-12


@dataclass(frozen=True)
class Charge:
    dataset: str
    epsilon: float
    delta: float
    statistic: str
    time: float


def _check_nonneg(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class BudgetLedger:
    """Tracks the (ε, δ) spent per dataset against a fixed total budget per dataset.

    Reveals nothing by itself; it is the data owner's own book-keeping.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, epsilon: float, delta: float = 0.0
    ) -> None:
        self.total_epsilon = _check_nonneg("epsilon budget", epsilon)
        self.total_delta = _check_nonneg("delta budget", delta)
        if self.total_delta >= 1:
            raise ConfigurationError(f"delta budget must be < 1, got {delta!r}")
        self.path = Path(path) if path is not None else None
        self._charges: list[Charge] = []
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._charges = self._read()

    # -- persistence -------------------------------------------------------------------------
    def _header(self) -> dict[str, float]:
        return {"budget_epsilon": self.total_epsilon, "budget_delta": self.total_delta}

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
                                  obj.get("statistic", ""), obj.get("time", 0.0)))
        return charges

    # -- queries -----------------------------------------------------------------------------
    def spent(self, dataset: str) -> tuple[float, float]:
        """(ε, δ) already spent on ``dataset``."""
        mine = [c for c in self._charges if c.dataset == dataset]
        return (math.fsum(c.epsilon for c in mine), math.fsum(c.delta for c in mine))

    def remaining(self, dataset: str) -> tuple[float, float]:
        """(ε, δ) still available for ``dataset``."""
        eps, delta = self.spent(dataset)
        return (max(0.0, self.total_epsilon - eps), max(0.0, self.total_delta - delta))

    def check(self, dataset: str, *, epsilon: float, delta: float = 0.0) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if charging would overspend; charges nothing."""
        epsilon = _check_nonneg("epsilon", epsilon)
        delta = _check_nonneg("delta", delta)
        eps_spent, delta_spent = self.spent(dataset)
        if eps_spent + epsilon > self.total_epsilon + _TOL or (
            delta_spent + delta > self.total_delta + _TOL
        ):
            left_e, left_d = self.remaining(dataset)
            raise PrivacyBudgetExceeded(
                f"release on dataset {dataset!r} needs epsilon={epsilon:g}, delta={delta:g} but "
                f"only epsilon={left_e:g}, delta={left_d:g} of the budget "
                f"(epsilon={self.total_epsilon:g}, delta={self.total_delta:g}) is left; "
                "request less, or stop releasing from this dataset"
            )

    def charge(
        self, dataset: str, *, epsilon: float, delta: float = 0.0, statistic: str = ""
    ) -> Charge:
        """Spend (ε, δ) on ``dataset`` or raise :class:`PrivacyBudgetExceeded` (nothing spent)."""
        if not isinstance(dataset, str) or not dataset:
            raise ConfigurationError(f"dataset must be a non-empty name, got {dataset!r}")
        with self._lock:
            if self.path is None:
                self.check(dataset, epsilon=epsilon, delta=delta)
                entry = Charge(dataset, float(epsilon), float(delta), statistic, time.time())
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
                    self.check(dataset, epsilon=epsilon, delta=delta)
                    entry = Charge(dataset, float(epsilon), float(delta), statistic, time.time())
                    fh.write(json.dumps(entry.__dict__, sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    self._charges.append(entry)
                    return entry
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
