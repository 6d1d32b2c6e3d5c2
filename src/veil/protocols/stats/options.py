"""The options of one statistics release: ONE frozen object from the API down to the kernels.

:func:`veil.stats.describe` and :func:`veil.stats.joint` take these as keyword arguments (the
field names below are theirs) and build one :class:`Options`; it travels unchanged inside the
:class:`~veil.protocols.stats.spec.Spec` to the MPC and HE kernels. The only copy ever made is
the one each MPC party receives from :func:`veil.stats.joint`: the driver's ledger and audit log
removed, the party's declared dataset name set (:meth:`Options.for_party`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.privacy import AuditLog, BudgetLedger, DPConfig, ReleasePolicy
from veil.privacy.policy import DEFAULT_MIN_COHORT

__all__ = ["Options", "LOGIT_ITERATIONS", "plain"]

LOGIT_ITERATIONS = 100  # default gradient steps of the logistic regression

Bounds = tuple[float, float] | Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Options:
    """Every option of a release, validated once when built (the messages name the keyword).

    What to compute besides the statistic names: ``bins`` (histogram edges), ``quantiles_n``
    and ``method`` (as :func:`statistics.quantiles`), ``target``, ``iterations`` and
    ``learning_rate`` (regressions). Release controls: ``bounds`` (clipping; needed by DP),
    ``epsilon``, ``delta``, ``mechanism`` (differential privacy, see :attr:`dp`),
    ``min_cohort`` (:attr:`policy`), ``ledger`` with ``dataset`` (:func:`~veil.stats.describe`)
    or ``dataset_names`` (:func:`~veil.stats.joint`), ``audit``. Where results go: ``backend``,
    ``to`` (MPC recipients; ``None``: every party). HE roles: ``paillier_bits``,
    ``allow_insecure``, ``flood``. ``timeout``: seconds for a local MPC run.
    """

    backend: str = "mpc"
    to: Sequence[int] | None = None
    bins: Sequence[float] | None = None
    quantiles_n: int = 4
    method: str = "exclusive"
    target: str | None = None
    iterations: int = LOGIT_ITERATIONS
    learning_rate: float | None = None
    bounds: Bounds | None = None
    epsilon: float | None = None
    delta: float = 0.0
    mechanism: str = "laplace"
    min_cohort: int = DEFAULT_MIN_COHORT
    ledger: BudgetLedger | None = None
    dataset: str | None = None
    dataset_names: Sequence[str] | None = None
    audit: AuditLog | None = None
    timeout: float = 120.0
    paillier_bits: int = 3072
    allow_insecure: bool = False
    flood: bool = False
    dp: DPConfig | None = field(init=False, repr=False, compare=False)
    policy: ReleasePolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # numpy scalars become Python numbers, so messages show ``5``, not ``np.int64(5)``
        for name in ("quantiles_n", "target", "iterations", "learning_rate", "epsilon", "delta",
                     "min_cohort"):
            object.__setattr__(self, name, plain(getattr(self, name)))
        bins, bounds = self.bins, self.bounds
        if bins is not None and not isinstance(bins, str):
            try:
                bins = tuple(plain(b) for b in bins)
            except TypeError:
                pass  # make_spec names the problem
        if isinstance(bounds, tuple | list):
            bounds = tuple(plain(b) for b in bounds)
        elif isinstance(bounds, Mapping):
            bounds = {k: tuple(plain(b) for b in v) if isinstance(v, tuple | list) else v
                      for k, v in bounds.items()}
        object.__setattr__(self, "bins", bins)
        object.__setattr__(self, "bounds", bounds)
        dp = None
        if self.epsilon is not None:
            if bounds is None:
                raise ConfigurationError(
                    "a differentially private release needs declared bounds: bounds=(low, high)"
                    " or bounds={column: (low, high)}; values are clipped to them")
            dp = DPConfig(epsilon=self.epsilon, bounds=bounds, delta=self.delta,
                          mechanism=self.mechanism)
        object.__setattr__(self, "dp", dp)
        if self.ledger is not None and not isinstance(self.ledger, BudgetLedger):
            raise ConfigurationError(
                f"ledger must be a BudgetLedger, got {type(self.ledger).__name__}")
        if self.audit is not None and not isinstance(self.audit, AuditLog):
            raise ConfigurationError(f"audit must be an AuditLog, got {type(self.audit).__name__}")
        object.__setattr__(self, "policy", ReleasePolicy(min_cohort=self.min_cohort))

    def bounds_for(self, columns: Sequence[str]) -> list[tuple[float, float]] | None:
        """Per-column clipping bounds in ``columns`` order (``None`` without ``bounds``)."""
        if self.dp is not None:
            return self.dp.bounds_for(columns)
        if self.bounds is None:
            return None
        return DPConfig(epsilon=1.0, bounds=self.bounds).bounds_for(columns)

    def for_party(self, dataset: str) -> Options:
        """What one MPC party of :func:`veil.stats.joint` gets: these options with its own
        declared ``dataset`` name, and without the driver's ledger and audit log."""
        return replace(self, ledger=None, audit=None, dataset=dataset, dataset_names=None)


def plain(value: Any) -> Any:
    """A numpy scalar (or 0-d array) as the equivalent Python object; anything else unchanged."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value
