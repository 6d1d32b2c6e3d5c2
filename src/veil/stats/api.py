"""Joint statistics, named after Python's :mod:`statistics` module.

Three ways to call every function:

* plain data, no ``party``: the plaintext answer (numpy / :mod:`statistics`) — also the oracle
  the tests compare every backend with. Release controls (minimum cohort, DP) still apply.
* inside an MPC job, ``party=party``: ``data`` is *this party's* rows; all parties call the same
  function together and get the joint result over everyone's rows (backend ``"mpc"``).
* :func:`veil.stats.joint` runs a whole local simulation from a list of datasets (any backend).

What is revealed, and to whom, is stated per backend in :mod:`veil.protocols.stats.secret` and
:mod:`veil.protocols.stats.homomorphic`; in short: the requested outputs (to all parties, or to
``to``), plus the total row count ``N`` to all parties for non-DP MPC releases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from veil.errors import UnsupportedOperationError
from veil.privacy import AuditLog, BudgetLedger
from veil.privacy.policy import DEFAULT_MIN_COHORT
from veil.protocols.stats.options import LOGIT_ITERATIONS, Options
from veil.stats._party import describe_table

__all__ = [
    "describe", "count", "sum_", "mean", "variance", "pvariance", "stdev", "pstdev",
    "covariance", "correlation", "histogram", "median", "median_low", "median_high",
    "quantiles", "minimum", "maximum", "linear_regression", "logistic_regression",
]

Bounds = tuple[float, float] | Mapping[str, tuple[float, float]]


def describe(
    data: Any,
    stats: Sequence[str] | str = ("count", "mean", "stdev"),
    *,
    party: Any = None,
    columns: Sequence[str] | None = None,
    backend: str = "mpc",
    to: Sequence[int] | None = None,
    bins: Sequence[float] | None = None,
    quantiles_n: int = 4,
    method: str = "exclusive",
    target: str | None = None,
    iterations: int = LOGIT_ITERATIONS,
    learning_rate: float | None = None,
    bounds: Bounds | None = None,
    epsilon: float | None = None,
    delta: float = 0.0,
    mechanism: str = "laplace",
    min_cohort: int = DEFAULT_MIN_COHORT,
    ledger: BudgetLedger | None = None,
    dataset: str | None = None,
    audit: AuditLog | None = None,
) -> dict[str, Any] | None:
    """Several statistics in ONE protocol run; returns ``{name: value}``.

    ``data``: numpy array / torch tensor (1-D: one column; 2-D: rows × columns), a data frame
    (pandas, ``pyarrow.Table`` or polars; any numeric dtype, nullable ones included), or a CSV
    or Parquet (``.parquet``/``.pq``) path. Per-column results are arrays in ``columns`` order
    (floats for 1-D input); ``covariance``/``correlation`` are matrices; ``histogram`` counts
    per bin of ``bins`` (numpy's edges convention); ``quantiles`` follow
    :func:`statistics.quantiles` (``quantiles_n``, ``method``); regressions predict ``target``
    (default: last column) from the other columns and return
    :class:`~veil.protocols.stats.spec.Regression`.

    Release controls: a recipient that would learn an aggregate over fewer than ``min_cohort``
    rows of *other* parties raises :class:`~veil.errors.PolicyViolation` (plain data: fewer
    than ``min_cohort`` rows; see :mod:`veil.privacy.policy`). ``epsilon`` makes the release
    differentially private (``mechanism`` ``"laplace"`` or ``"gaussian"`` with ``delta``); it
    needs ``bounds`` (values are clipped to them inside the protocol). With a ``ledger`` the
    release is charged to the declared name ``dataset`` (required) and to the data's content
    fingerprint: a DP release spends (ε, δ), an exact release counts against the ledger's
    ``max_exact`` (default 1: later releases of that dataset must be DP — the defence against
    differencing two exact releases).
    ``bounds`` without ``epsilon`` clips too and narrows the search range of order statistics.
    Under DP, order statistics (median*, quantiles, min, max; backend ``"mpc"`` and plain data)
    come from a noisy binary search over the bounds (16 rounds, resolution (high - low) / 2^16)
    that reveals only one noisy comparison bit per round: no interpolation (rank ``ceil(q·N)``
    for quantile ``q``; ``method`` is ignored), rank error about noise std / den for ``q`` =
    num/den, and they cost one more block of the even budget split; ``to`` must be None.

    With ``party`` (inside an MPC job) only backend ``"mpc"`` applies; parties outside ``to``
    get ``None``. Nothing but the outputs is revealed, except the total row count ``N`` (to all
    parties) when not DP; see :mod:`veil.protocols.stats.secret` for the exact transcript.
    """
    if party is not None and backend != "mpc":
        raise UnsupportedOperationError(
            f"inside an MPC job only backend='mpc' runs; for {backend!r} use "
            "veil.stats.joint(datasets, ..., backend=...)")
    options = Options(
        backend=backend, to=to, bins=bins, quantiles_n=quantiles_n, method=method, target=target,
        iterations=iterations, learning_rate=learning_rate, bounds=bounds, epsilon=epsilon,
        delta=delta, mechanism=mechanism, min_cohort=min_cohort, ledger=ledger, dataset=dataset,
        audit=audit)
    return describe_table(data, stats, party=party, columns=columns, options=options)


def _one(name: str, data: Any, kwargs: dict[str, Any]) -> Any:
    out = describe(data, [name], **kwargs)
    return None if out is None else out[name]


def count(data: Any, **kwargs: Any) -> int | None:
    """Number of rows (all backends). Reveals N."""
    return _one("count", data, kwargs)


def sum_(data: Any, **kwargs: Any) -> Any:
    """Column sums (all backends); exported as ``veil.stats.sum``."""
    return _one("sum", data, kwargs)


def mean(data: Any, **kwargs: Any) -> Any:
    """Arithmetic mean per column (all backends). Reveals the means (and N, see describe)."""
    return _one("mean", data, kwargs)


def variance(data: Any, **kwargs: Any) -> Any:
    """Sample variance (n - 1) per column (all backends), as :func:`statistics.variance`."""
    return _one("variance", data, kwargs)


def pvariance(data: Any, **kwargs: Any) -> Any:
    """Population variance per column (all backends), as :func:`statistics.pvariance`."""
    return _one("pvariance", data, kwargs)


def stdev(data: Any, **kwargs: Any) -> Any:
    """Sample standard deviation (all backends). MPC opens the variance (same information)."""
    return _one("stdev", data, kwargs)


def pstdev(data: Any, **kwargs: Any) -> Any:
    """Population standard deviation (all backends)."""
    return _one("pstdev", data, kwargs)


def covariance(data: Any, **kwargs: Any) -> Any:
    """Sample covariance matrix of the columns (all backends)."""
    return _one("covariance", data, kwargs)


def correlation(data: Any, **kwargs: Any) -> Any:
    """Pearson correlation matrix (all backends; MPC reveals only the correlations)."""
    return _one("correlation", data, kwargs)


def histogram(data: Any, bins: Sequence[float], **kwargs: Any) -> Any:
    """Counts per bin over the given edges, per column (all backends)."""
    return _one("histogram", data, {**kwargs, "bins": bins})


def median(data: Any, **kwargs: Any) -> Any:
    """Median as :func:`statistics.median` (mpc only; the mean of the two middle values for an
    even count); reveals only the median, to every party (or only to the parties in ``to``).
    With ``epsilon``: a DP noisy search (no averaging: rank ceil(N/2)), see :func:`describe`."""
    return _one("median", data, kwargs)


def median_low(data: Any, **kwargs: Any) -> Any:
    """Low median (mpc only); reveals only that value."""
    return _one("median_low", data, kwargs)


def median_high(data: Any, **kwargs: Any) -> Any:
    """High median (mpc only); reveals only that value."""
    return _one("median_high", data, kwargs)


def quantiles(data: Any, *, n: int = 4, method: str = "exclusive", **kwargs: Any) -> Any:
    """Cut points as :func:`statistics.quantiles` (mpc only); reveals only the cut points, to
    every party (or only to the parties in ``to``). With ``epsilon``: DP rank searches (rank
    ceil(i·N/n), no interpolation, ``method`` ignored), see :func:`describe`."""
    return _one("quantiles", data, {**kwargs, "quantiles_n": n, "method": method})


def minimum(data: Any, **kwargs: Any) -> Any:
    """Column minima (mpc only); exported as ``veil.stats.min``. Reveals only the minima."""
    return _one("min", data, kwargs)


def maximum(data: Any, **kwargs: Any) -> Any:
    """Column maxima (mpc only); exported as ``veil.stats.max``. Reveals only the maxima."""
    return _one("max", data, kwargs)


def linear_regression(data: Any, *, target: str | None = None, **kwargs: Any) -> Any:
    """Ordinary least squares of ``target`` on the other columns (all backends).

    MPC reveals only the coefficients and intercept; Paillier/CKKS reveal the aggregated moment
    matrices to the key holder, who solves the normal equations.
    """
    return _one("linear_regression", data, {**kwargs, "target": target})


def logistic_regression(data: Any, *, target: str | None = None,
                        iterations: int = LOGIT_ITERATIONS,
                        learning_rate: float | None = None, **kwargs: Any) -> Any:
    """Logistic regression trained jointly (mpc only): full-batch gradient descent on shares
    over standardised features; reveals only the final coefficients and intercept."""
    return _one("logistic_regression", data, {**kwargs, "target": target,
                                               "iterations": iterations,
                                               "learning_rate": learning_rate})
