"""Joint statistics over horizontally partitioned data (names follow :mod:`statistics`).

    from veil import stats
    stats.mean([1.0, 2.0, 3.0] * 4)                            # plaintext (the oracle)
    def job(party):                                            # inside veil.mpc.run
        return stats.describe(my_rows, ["count", "mean", "stdev", "quantiles"], party=party)
    stats.joint(["a.csv", "b.csv", "c.csv"], ["mean", "correlation"], backend="paillier")

Backends: ``"mpc"`` (everything), ``"paillier"`` and ``"ckks"`` (linear statistics: count, sum,
mean, (p)variance, (p)stdev, covariance, correlation, histogram, linear_regression). Release
controls (minimum cohort, differential privacy, budget ledger, audit log) come from
:mod:`veil.privacy`. Every keyword argument of these functions is a field of one frozen
:class:`Options` (validated once, then passed unchanged to the kernels). CSV files are read up to
:data:`MAX_CSV_BYTES` bytes.
"""

from __future__ import annotations

from veil.protocols.stats.options import Options
from veil.protocols.stats.spec import BACKENDS, SUPPORT, Regression
from veil.stats._data import MAX_CSV_BYTES
from veil.stats.api import (
    correlation,
    count,
    covariance,
    describe,
    histogram,
    linear_regression,
    logistic_regression,
    maximum,
    mean,
    median,
    median_high,
    median_low,
    minimum,
    pstdev,
    pvariance,
    quantiles,
    stdev,
    sum_,
    variance,
)
from veil.stats.joint import JointResult, joint

sum = sum_
min = minimum
max = maximum

__all__ = [
    "BACKENDS", "SUPPORT", "MAX_CSV_BYTES", "Options", "Regression", "JointResult", "joint",
    "describe", "count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev", "covariance",
    "correlation", "histogram", "median", "median_low", "median_high", "quantiles", "min", "max",
    "minimum", "maximum", "linear_regression", "logistic_regression",
]
