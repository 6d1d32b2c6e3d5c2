"""Joint statistics: what to compute, the per-party sufficient statistics, and post-processing.

Shared by every backend (``veil.protocols.stats.secret``, ``veil.protocols.stats.homomorphic``)
and by the plaintext oracle. Data are horizontally partitioned: every party holds rows with the
same columns.

Linear statistics (count, sum, mean, variances, covariance/correlation, histogram, OLS) only need
the sum over parties of a fixed-size vector of *sufficient statistics* per party (:func:`local_
aggregates`): row count, column sums, sums of products and histogram counts. Order statistics
(median, quantiles, min, max) and logistic regression need the rows themselves (MPC only); their
positions are in ``veil.protocols.stats.order``. Differentially private order statistics are
rank searches without interpolation, run by ``veil.protocols.stats.dp_order`` (MPC and plain
data).
"""

from __future__ import annotations

import math
import statistics as pystats
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, UnsupportedOperationError
from veil.protocols.stats.options import Options

__all__ = [
    "BACKENDS", "LINEAR", "ORDER", "SUPPORT", "DP_SUPPORTED", "Spec", "Regression", "make_spec",
    "layout", "local_aggregates", "finalize_linear", "plain_results", "VALUE_LIMIT",
]

BACKENDS = ("mpc", "paillier", "ckks")
LINEAR = ("count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev", "covariance",
          "correlation", "histogram", "linear_regression")
ORDER = ("median", "median_low", "median_high", "quantiles", "min", "max")
SUPPORT: dict[str, tuple[str, ...]] = {
    **{s: BACKENDS for s in LINEAR},
    **{s: ("mpc",) for s in ORDER},
    "logistic_regression": ("mpc",),
}
DP_SUPPORTED = LINEAR + ORDER  # DP order statistics: backend mpc and plain data only
VALUE_LIMIT = 2.0**15  # |x| bound for the MPC backend (fixed point, 16 fractional bits)
_QMETHODS = ("exclusive", "inclusive")


LOGIT_TOLERANCE = 1e-3  # gradient norm (standardised features) below which a fit has converged
LOGIT_MOMENTUM = 0.7  # Nesterov momentum of the logistic regression


def logit_step(spec: Spec) -> float:
    """Step size of the logistic regression: ``spec.learning_rate``, or by default
    ``4 / max(1, d)`` for ``d`` features, which is ``1/L`` for the largest smoothness constant
    ``L = max(1, d) / 4`` the logistic loss can have on standardised features (its Hessian is at
    most ``Z^T Z / (4N)``, whose largest eigenvalue is at most ``max(1, d) / 4``), so the descent
    converges whatever the data's correlations."""
    if spec.learning_rate is not None:
        return spec.learning_rate
    return 4.0 / max(1, spec.d - 1)


@dataclass(frozen=True)
class Regression:
    """A fitted linear model ``y ≈ features @ coef + intercept``.

    Logistic regressions also report ``iterations`` (gradient-descent steps taken) and
    ``converged``: whether the gradient of the mean log-loss on the standardised features had
    Euclidean norm at most :data:`LOGIT_TOLERANCE` after the last step (``None`` for OLS).
    A ``False`` means more ``iterations`` are needed; the coefficients are then not the
    maximum-likelihood estimate.
    """

    coef: np.ndarray
    intercept: float
    features: tuple[str, ...]
    iterations: int | None = None
    converged: bool | None = None

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


@dataclass(frozen=True)
class Spec:
    """What one release computes, and the :class:`~veil.protocols.stats.options.Options` it
    runs under (passed on unchanged to every kernel). Built and validated by :func:`make_spec`.

    ``bins`` and ``bounds`` are ``options.bins`` / ``options.bounds`` validated for these
    columns: the histogram edges (``None`` without a histogram) and one ``(low, high)`` per
    column (``None`` without bounds)."""

    stats: tuple[str, ...]
    columns: tuple[str, ...]
    options: Options = field(default_factory=Options)
    bins: tuple[float, ...] | None = None
    bounds: tuple[tuple[float, float], ...] | None = None

    @property
    def d(self) -> int:
        return len(self.columns)

    def needs(self, *names: str) -> bool:
        return any(n in self.stats for n in names)

    @property
    def quantiles_n(self) -> int:
        return self.options.quantiles_n

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def target(self) -> str | None:
        return self.options.target

    @property
    def iterations(self) -> int:
        return self.options.iterations

    @property
    def learning_rate(self) -> float | None:
        lr = self.options.learning_rate
        return None if lr is None else float(lr)

    @property
    def target_index(self) -> int:
        if self.target is None:
            return self.d - 1
        return self.columns.index(self.target)


def make_spec(stats: Sequence[str] | str, columns: Sequence[str],
              options: Options | None = None) -> Spec:
    """Validate a request (``options``: the defaults when ``None``); raises before any protocol
    starts."""
    o = Options() if options is None else options
    per_col = o.bounds_for(columns)
    if isinstance(stats, str):
        stats = [s.strip() for s in stats.split(",") if s.strip()]
    stats = tuple(dict.fromkeys(stats))
    if not stats:
        raise ConfigurationError("no statistics requested; name at least one, e.g. ['mean']")
    _check_support(stats, o.backend, o.dp is not None)
    columns = tuple(str(c) for c in columns)
    if not columns or len(set(columns)) != len(columns):
        raise ConfigurationError(f"columns must be non-empty and distinct, got {list(columns)}")
    edges = _edges(o.bins) if "histogram" in stats else None
    quantiles_n, target, iterations, learning_rate = (
        o.quantiles_n, o.target, o.iterations, o.learning_rate)
    if isinstance(quantiles_n, bool) or not isinstance(quantiles_n, int) or quantiles_n < 1:
        raise ConfigurationError(f"quantiles n must be an integer >= 1, got {quantiles_n!r}")
    if o.method not in _QMETHODS:
        raise ConfigurationError(
            f"quantile method must be one of {_QMETHODS}, got {o.method!r}")
    if any(s in stats for s in ("linear_regression", "logistic_regression")):
        if len(columns) < 2:
            raise ConfigurationError(
                "regression needs at least two columns (features and a target); got "
                f"{list(columns)}")
        if target is not None and target not in columns:
            raise ConfigurationError(
                f"regression target {target!r} is not among the columns {list(columns)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not (
        1 <= iterations <= 10_000
    ):
        raise ConfigurationError(f"iterations must be an integer in 1..10000, got {iterations!r}")
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(
            learning_rate, (int, float)) or not 0 < learning_rate < 100):
        raise ConfigurationError(
            f"learning_rate must be None (automatic) or in (0, 100), got {learning_rate!r}")
    return Spec(stats, columns, o, edges, _column_bounds(per_col, columns))


def _check_support(stats: Sequence[str], backend: str, dp: bool) -> None:
    if backend not in BACKENDS:
        raise ConfigurationError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    for s in stats:
        if s not in SUPPORT:
            raise ConfigurationError(
                f"unknown statistic {s!r}; available: {', '.join(SUPPORT)}")
        if backend not in SUPPORT[s]:
            raise UnsupportedOperationError(
                f"{s} is not supported by backend {backend!r}; use backend="
                f"{' or '.join(repr(b) for b in SUPPORT[s])}")
        if dp and s not in DP_SUPPORTED:
            raise UnsupportedOperationError(
                f"{s} has no differentially private release in Veil (DP covers "
                f"{', '.join(DP_SUPPORTED)}); drop epsilon or the statistic")


def _edges(bins: Sequence[float] | None) -> tuple[float, ...]:
    if bins is None:
        raise ConfigurationError("histogram needs bin edges: bins=[e0, e1, ..., ek]")
    arr = np.asarray(bins, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)) or np.any(
        np.diff(arr) <= 0
    ):
        raise ConfigurationError(
            f"bins must be >= 2 finite, strictly increasing edges, got {arr.tolist()}")
    return tuple(float(e) for e in arr)


def _column_bounds(bounds: Sequence[tuple[float, float]] | None,
                   columns: Sequence[str]) -> tuple[tuple[float, float], ...] | None:
    if bounds is None:
        return None
    bnds = tuple((float(lo), float(hi)) for lo, hi in bounds)
    if len(bnds) != len(columns) or any(
        not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) for lo, hi in bnds
    ):
        raise ConfigurationError(
            f"bounds must give finite (low, high) with low < high for each of the "
            f"{len(columns)} columns, got {bounds!r}")
    return bnds


# --- sufficient statistics --------------------------------------------------------------------
def _full_cross(spec: Spec) -> bool:
    return spec.needs("covariance", "correlation", "linear_regression")


def _second(spec: Spec) -> bool:
    return _full_cross(spec) or spec.needs("variance", "pvariance", "stdev", "pstdev")


def layout(spec: Spec) -> list[tuple[str, int]]:
    """Blocks of the sufficient-statistics vector: (name, size), in order."""
    d = spec.d
    blocks = [("count", 1)]
    if spec.needs("sum", "mean", "variance", "pvariance", "stdev", "pstdev") or _full_cross(spec):
        blocks.append(("sums", d))
    if _second(spec):
        blocks.append(("products", d * (d + 1) // 2 if _full_cross(spec) else d))
    if spec.needs("histogram") and spec.bins is not None:
        blocks.append(("histogram", d * (len(spec.bins) - 1)))
    return blocks


def clip(x: np.ndarray, spec: Spec) -> np.ndarray:
    if spec.bounds is None:
        return x
    lo = np.array([b[0] for b in spec.bounds])
    hi = np.array([b[1] for b in spec.bounds])
    return np.clip(x, lo, hi)


def local_aggregates(x: np.ndarray, spec: Spec) -> np.ndarray:
    """This party's sufficient-statistics vector (float64) for its rows ``x`` (n × d), clipped."""
    x = clip(np.asarray(x, dtype=np.float64).reshape(-1, spec.d), spec)
    parts: list[np.ndarray] = []
    for name, _size in layout(spec):
        if name == "count":
            parts.append(np.array([float(x.shape[0])]))
        elif name == "sums":
            parts.append(x.sum(axis=0))
        elif name == "products":
            if _full_cross(spec):
                iu = np.triu_indices(spec.d)
                parts.append((x.T @ x)[iu])
            else:
                parts.append((x * x).sum(axis=0))
        elif name == "histogram":
            edges = np.asarray(spec.bins)
            parts.extend(np.histogram(x[:, j], bins=edges)[0].astype(np.float64)
                         for j in range(spec.d))
    return np.concatenate(parts)


def sensitivities(spec: Spec, bounds: Sequence[tuple[float, float]]) -> list[tuple[str, int,
                                                                                     float, float]]:
    """(name, size, L1, L2) per block when one row is added or removed, values in ``bounds``."""
    big = np.array([max(abs(lo), abs(hi)) for lo, hi in bounds])
    out = []
    for name, size in layout(spec):
        if name == "count":
            out.append((name, size, 1.0, 1.0))
        elif name == "sums":
            out.append((name, size, float(big.sum()), float(np.sqrt((big**2).sum()))))
        elif name == "products":
            if _full_cross(spec):
                iu = np.triu_indices(spec.d)
                prod = np.outer(big, big)[iu]
            else:
                prod = big**2
            out.append((name, size, float(prod.sum()), float(np.sqrt((prod**2).sum()))))
        else:
            out.append((name, size, float(spec.d), float(np.sqrt(spec.d))))
    return out


def _split(spec: Spec, total: np.ndarray) -> dict[str, np.ndarray]:
    out, pos = {}, 0
    for name, size in layout(spec):
        out[name] = np.asarray(total[pos:pos + size], dtype=np.float64)
        pos += size
    return out


def finalize_linear(spec: Spec, total: np.ndarray) -> dict[str, Any]:
    """Linear statistics from the summed (possibly noisy) sufficient statistics, in plaintext.

    Noisy inputs are post-processed into range: counts >= 1, variances >= 0, |corr| <= 1, means
    inside the bounds.
    """
    parts = _split(spec, total)
    d = spec.d
    n_raw = float(parts["count"][0])
    n = max(n_raw, 1.0)
    out: dict[str, Any] = {}
    if "count" in spec.stats:
        out["count"] = int(round(n_raw))
    s = parts.get("sums")
    if "sum" in spec.stats and s is not None:
        out["sum"] = s.copy()
    mean = None if s is None else s / n
    if mean is not None and spec.bounds is not None:
        mean = np.clip(mean, [b[0] for b in spec.bounds], [b[1] for b in spec.bounds])
    if "mean" in spec.stats and mean is not None:
        out["mean"] = mean
    if "products" in parts and mean is not None:
        prod = parts["products"]
        if _full_cross(spec):
            m2 = np.zeros((d, d))
            iu = np.triu_indices(d)
            m2[iu] = prod
            m2 = m2 + np.triu(m2, 1).T
        else:
            m2 = np.diag(prod)
        pcov = m2 / n - np.outer(mean, mean)
        diag = np.maximum(np.diag(pcov), 0.0)
        scov = pcov * n / max(n - 1.0, 1.0)
        for key, val in (("pvariance", diag), ("variance", diag * n / max(n - 1.0, 1.0))):
            if key in spec.stats:
                out[key] = val
        if "pstdev" in spec.stats:
            out["pstdev"] = np.sqrt(diag)
        if "stdev" in spec.stats:
            out["stdev"] = np.sqrt(diag * n / max(n - 1.0, 1.0))
        if "covariance" in spec.stats:
            out["covariance"] = scov
        if "correlation" in spec.stats:
            sd = np.sqrt(np.maximum(np.diag(scov), 1e-300))
            corr = np.clip(scov / np.outer(sd, sd), -1.0, 1.0)
            np.fill_diagonal(corr, 1.0)  # exactly 1 (float64 division may give 1 - 2^-53)
            out["correlation"] = corr
        if "linear_regression" in spec.stats:
            out["linear_regression"] = _ols(spec, m2, parts["sums"], n)
    if "histogram" in spec.stats:
        out["histogram"] = parts["histogram"].reshape(d, -1)
    return out


def _ols(spec: Spec, m2: np.ndarray, sums: np.ndarray, n: float) -> Regression:
    t = spec.target_index
    f = [j for j in range(spec.d) if j != t]
    a = np.zeros((len(f) + 1, len(f) + 1))
    a[:-1, :-1] = m2[np.ix_(f, f)]
    a[:-1, -1] = a[-1, :-1] = sums[f]
    a[-1, -1] = n
    b = np.append(m2[f, t], sums[t])
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    return Regression(sol[:-1], float(sol[-1]), tuple(spec.columns[j] for j in f))


# --- plaintext oracle ------------------------------------------------------------------------
def plain_results(x: np.ndarray, spec: Spec) -> dict[str, Any]:
    """The plaintext answer (numpy / :mod:`statistics`) over all rows ``x`` (n × d)."""
    x = clip(np.asarray(x, dtype=np.float64).reshape(-1, spec.d), spec)
    n = x.shape[0]
    out: dict[str, Any] = {}
    for s in spec.stats:
        if s == "count":
            out[s] = n
        elif s == "sum":
            out[s] = x.sum(axis=0)
        elif s == "mean":
            out[s] = x.mean(axis=0)
        elif s in ("variance", "pvariance", "stdev", "pstdev"):
            ddof = 1 if s in ("variance", "stdev") else 0
            v = x.var(axis=0, ddof=ddof)
            out[s] = np.sqrt(v) if "stdev" in s else v
        elif s == "covariance":
            out[s] = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
        elif s == "correlation":
            out[s] = np.atleast_2d(np.corrcoef(x, rowvar=False))
        elif s == "histogram":
            out[s] = np.stack([np.histogram(x[:, j], bins=np.asarray(spec.bins))[0]
                               for j in range(spec.d)]).astype(np.float64)
        elif s in ("median", "median_low", "median_high"):
            fn = getattr(pystats, s)
            out[s] = np.array([fn(x[:, j].tolist()) for j in range(spec.d)])
        elif s == "quantiles":
            out[s] = np.array([pystats.quantiles(x[:, j].tolist(), n=spec.quantiles_n,
                                                 method=spec.method)
                               for j in range(spec.d)]).reshape(spec.d, spec.quantiles_n - 1)
        elif s == "min":
            out[s] = x.min(axis=0)
        elif s == "max":
            out[s] = x.max(axis=0)
        elif s == "linear_regression":
            t = spec.target_index
            f = [j for j in range(spec.d) if j != t]
            design = np.column_stack([x[:, f], np.ones(n)])
            sol = np.linalg.lstsq(design, x[:, t], rcond=None)[0]
            out[s] = Regression(sol[:-1], float(sol[-1]), tuple(spec.columns[j] for j in f))
        elif s == "logistic_regression":
            out[s] = logistic_plain(x, spec)
    return out


def logistic_plain(x: np.ndarray, spec: Spec) -> Regression:
    """Reference for the joint logistic regression: the *same* algorithm in float64.

    Full-batch gradient descent with Nesterov momentum (:data:`LOGIT_MOMENTUM`) for
    ``spec.iterations`` steps (default
    :data:`~veil.protocols.stats.options.LOGIT_ITERATIONS`) of size :func:`logit_step`, on
    features standardised with the pooled mean and population standard deviation, starting at
    zero; coefficients are mapped back to the original feature scale. ``converged``: gradient
    norm at most :data:`LOGIT_TOLERANCE` after the last step (standardised problem). The default
    reaches the maximum-likelihood fit on typical standardised data (an age/BMI risk model, as
    in the CLI example, to 1e-3 in about 60 steps: ``tests/leakage/test_logit_convergence.py``);
    strongly correlated features or nearly separable classes need more steps (``converged``
    says so).
    """
    t = spec.target_index
    f = [j for j in range(spec.d) if j != t]
    feats, y = x[:, f], x[:, t]
    if not np.all((y == 0) | (y == 1)):
        raise ConfigurationError(
            f"logistic regression needs a 0/1 target; column {spec.columns[t]!r} has other values")
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (feats - mu) / sd
    w, b = np.zeros(len(f)), 0.0
    vw, vb = np.zeros(len(f)), 0.0
    n, lr, mom = z.shape[0], logit_step(spec), LOGIT_MOMENTUM
    for _ in range(spec.iterations):  # Nesterov: the gradient at the look-ahead point
        g = 1.0 / (1.0 + np.exp(-(z @ (w + mom * vw) + (b + mom * vb)))) - y
        vw = mom * vw - lr * (z.T @ g) / n
        vb = mom * vb - lr * float(g.mean())
        w, b = w + vw, b + vb
    g = 1.0 / (1.0 + np.exp(-(z @ w + b))) - y
    norm2 = float(np.sum(((z.T @ g) / n) ** 2) + g.mean() ** 2)
    coef = w / sd
    return Regression(coef, float(b - coef @ mu), tuple(spec.columns[j] for j in f),
                      spec.iterations, norm2 <= LOGIT_TOLERANCE**2)
