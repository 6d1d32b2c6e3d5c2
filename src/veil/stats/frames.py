"""A joint release as data people work with: pandas frames, Arrow tables, JSON, files.

Three shapes (:class:`~veil.stats.JointResult` has a method for each):

* **wide** — statistic × column, like :meth:`pandas.DataFrame.describe`: one row per per-column
  statistic (``count``, ``sum``, ``mean``, ``variance``, ``stdev``, ``median``, ``min``,
  ``max``, ...), quantile cut points as rows ``"25%"``, ``"50%"``, ... Matrices, histograms
  and regressions have no place in it; they are in the long form and in :func:`frame`.
* **long** (tidy) — one row per released number, every statistic included: columns
  ``statistic``, ``column``, ``other`` (the second column of a covariance/correlation entry,
  the target of a regression), ``bin_low``/``bin_high`` (histogram bin; the last bin is closed,
  as in :func:`numpy.histogram`), ``probability`` (quantile cut point) and ``value``.
  Regression rows have the term (a feature, or ``"intercept"``) in ``column``.
* **one statistic** — :func:`frame`: its natural shape (a Series per column, a square frame for
  covariance/correlation, bins or cut points × columns, a Series of regression terms). Bins are
  a :class:`pandas.IntervalIndex` closed on the left; the last bin also holds its right edge
  (numpy's convention).

Rows come in the order of ``DataFrame.describe()`` (count, mean, spread, min, cut points,
max), then matrices, histograms and regressions.

:func:`to_dict` gives the JSON form (``veil stats --json``); :func:`write` writes ``.csv`` and
``.parquet`` (the long form) or ``.json`` files, atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, UnsupportedOperationError
from veil.protocols.stats.spec import Regression

__all__ = ["wide", "long", "frame", "to_dict", "write", "OUTPUT_SUFFIXES", "check_output_path"]

PER_COLUMN = ("count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev", "median",
              "median_low", "median_high", "min", "max")
MATRICES = ("covariance", "correlation")
# rows in the order of DataFrame.describe(): count, mean, spread, min, cut points, max
ORDER = ("count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev", "min",
         "quantiles", "median_low", "median", "median_high", "max", "covariance",
         "correlation", "histogram", "linear_regression", "logistic_regression")

OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")
LONG_COLUMNS = ("statistic", "column", "other", "bin_low", "bin_high", "probability", "value")


def _ordered(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(values.items(), key=lambda kv: rank.get(kv[0], len(ORDER)))


def _pd() -> Any:
    try:
        import pandas as pd
    except ModuleNotFoundError as exc:  # pragma: no cover - pandas is a dependency of stats
        raise UnsupportedOperationError(
            "data frames need pandas: pip install 'veil[stats]'") from exc
    return pd


def probabilities(k: int) -> list[float]:
    """The cut points' probabilities of ``k`` quantiles (``n = k + 1`` equal groups)."""
    return [(i + 1) / (k + 1) for i in range(k)]


def percent(p: float) -> str:
    """``0.25`` -> ``"25%"`` (pandas' describe labels)."""
    return f"{100 * p:.4g}%"


def _per_column(value: Any, d: int) -> np.ndarray:
    return np.broadcast_to(np.atleast_1d(np.asarray(value, dtype=np.float64)), (d,))


def _by_column(value: Any, d: int) -> np.ndarray:
    """Histograms and quantiles: one row per data column (1-D input gives a 1-D array)."""
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape(d, -1)


def _target(reg: Regression, columns: Sequence[str]) -> str | None:
    rest = [c for c in columns if c not in reg.features]
    return rest[0] if len(rest) == 1 else None


def _edges(bins: Sequence[float] | None, k: int) -> list[tuple[float, float]]:
    if bins is not None and len(bins) == k + 1:
        return [(float(lo), float(hi)) for lo, hi in zip(bins[:-1], bins[1:])]
    return [(math.nan, math.nan)] * k


def wide(values: Mapping[str, Any], columns: Sequence[str]) -> Any:
    """Statistic × column frame of the per-column statistics (see the module docstring)."""
    pd = _pd()
    cols = [str(c) for c in columns]
    d = len(cols)
    rows: dict[str, np.ndarray] = {}
    for name, value in _ordered(values):
        if name in PER_COLUMN:
            rows[name] = _per_column(value, d)
        elif name == "quantiles":
            arr = _by_column(value, d)
            for j, p in enumerate(probabilities(arr.shape[1])):
                rows[percent(p)] = arr[:, j]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=cols, dtype=np.float64)
    out.index.name = "statistic"
    out.columns.name = "column"
    return out


def _long_rows(name: str, value: Any, cols: list[str],
               bins: Sequence[float] | None) -> list[tuple[Any, ...]]:
    nan, d = math.nan, len(cols)
    if isinstance(value, Regression):
        target = _target(value, cols)
        terms = [(str(f), float(c)) for f, c in zip(value.features, value.coef)]
        return [(name, term, target, nan, nan, nan, c)
                for term, c in terms + [("intercept", float(value.intercept))]]
    if name in MATRICES:
        arr = np.asarray(value, dtype=np.float64).reshape(d, d)
        return [(name, a, b, nan, nan, nan, float(arr[i, j]))
                for i, a in enumerate(cols) for j, b in enumerate(cols)]
    if name == "histogram":
        arr = _by_column(value, d)
        edges = _edges(bins, arr.shape[1])
        return [(name, c, None, lo, hi, nan, float(arr[i, j]))
                for i, c in enumerate(cols) for j, (lo, hi) in enumerate(edges)]
    if name == "quantiles":
        arr = _by_column(value, d)
        return [(name, c, None, nan, nan, p, float(arr[i, j]))
                for i, c in enumerate(cols) for j, p in enumerate(probabilities(arr.shape[1]))]
    return [(name, c, None, nan, nan, nan, float(v))
            for c, v in zip(cols, _per_column(value, d))]


def long(values: Mapping[str, Any], columns: Sequence[str],
         bins: Sequence[float] | None = None) -> Any:
    """The tidy form: one row per released number (see the module docstring)."""
    pd = _pd()
    cols = [str(c) for c in columns]
    rows = [r for name, value in _ordered(values) for r in _long_rows(name, value, cols, bins)]
    out = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    return out.astype({"statistic": "string", "column": "string", "other": "string",
                       "bin_low": "float64", "bin_high": "float64",
                       "probability": "float64", "value": "float64"})


def frame(values: Mapping[str, Any], columns: Sequence[str], name: str,
          bins: Sequence[float] | None = None) -> Any:
    """One statistic in its natural shape (see the module docstring)."""
    pd = _pd()
    if name not in values:
        raise ConfigurationError(
            f"this release has no statistic {name!r}; it has {sorted(values)}")
    cols, value = [str(c) for c in columns], values[name]
    d = len(cols)
    if isinstance(value, Regression):
        terms = [str(f) for f in value.features] + ["intercept"]
        return pd.Series(list(np.asarray(value.coef, dtype=np.float64)) + [value.intercept],
                         index=pd.Index(terms, name="term"), name=_target(value, cols) or name,
                         dtype=np.float64)
    if name in MATRICES:
        arr = np.asarray(value, dtype=np.float64).reshape(d, d)
        return pd.DataFrame(arr, index=pd.Index(cols, name="column"), columns=cols)
    if name == "histogram":
        arr = _by_column(value, d)
        edges = _edges(bins, arr.shape[1])
        if math.isnan(edges[0][0]):
            index = pd.RangeIndex(arr.shape[1], name="bin")
        else:
            index = pd.IntervalIndex.from_tuples(edges, closed="left", name="bin")
        return pd.DataFrame(arr.T, index=index, columns=cols)
    if name == "quantiles":
        arr = _by_column(value, d)
        return pd.DataFrame(arr.T, index=pd.Index(probabilities(arr.shape[1]),
                                                  name="probability"), columns=cols)
    return pd.Series(_per_column(value, d), index=pd.Index(cols, name="column"), name=name)


def _json_value(name: str, value: Any, cols: list[str],
                bins: Sequence[float] | None) -> Any:
    d = len(cols)
    if isinstance(value, Regression):
        return {"target": _target(value, cols),
                "coefficients": {str(f): float(c) for f, c in zip(value.features, value.coef)},
                "intercept": float(value.intercept), "iterations": value.iterations,
                "converged": value.converged}
    if name in MATRICES:
        arr = np.asarray(value, dtype=np.float64).reshape(d, d)
        return {a: {b: float(arr[i, j]) for j, b in enumerate(cols)} for i, a in enumerate(cols)}
    if name == "histogram":
        arr = _by_column(value, d)
        return {"edges": None if bins is None else [float(b) for b in bins],
                "counts": {c: [float(v) for v in arr[i]] for i, c in enumerate(cols)}}
    if name == "quantiles":
        arr = _by_column(value, d)
        return {"probabilities": probabilities(arr.shape[1]),
                "values": {c: [float(v) for v in arr[i]] for i, c in enumerate(cols)}}
    if name == "count":
        return int(np.asarray(value).reshape(-1)[0])
    return {c: float(v) for c, v in zip(cols, _per_column(value, d))}


def to_dict(result: Any) -> dict[str, Any]:
    """A :class:`~veil.stats.JointResult` as JSON-ready plain data (``veil stats --json``)."""
    cols = [str(c) for c in result.columns]
    bins = result.bins
    return {
        "backend": result.backend, "parties": result.parties, "columns": cols,
        "epsilon": result.epsilon,
        "statistics": {name: _json_value(name, v, cols, bins)
                       for name, v in _ordered(result.values)},
        "seconds": round(float(result.seconds), 6), "bytes_sent": int(result.bytes_sent),
        "protocol_seconds": (None if result.protocol_seconds is None
                             else round(float(result.protocol_seconds), 6)),
    }


def check_output_path(path: str | os.PathLike[str], flag: str = "path") -> Path:
    """Refuse an output path that :func:`write` could not write, before any work is done."""
    p = Path(path)
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigurationError(
            f"{flag} {str(p)!r}: unknown file type {p.suffix or '(none)'!r}; use a name ending "
            f"in {', '.join(OUTPUT_SUFFIXES)}")
    if p.is_dir():
        raise ConfigurationError(f"{flag} {str(p)!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(
            f"{flag} {str(p)!r}: directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigurationError(f"{flag} {str(p)!r}: not writable")
    if p.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"{flag} {str(p)!r}: Parquet needs pyarrow (pip install 'veil[stats]'), or "
                "write .csv or .json") from exc
    return p


def write(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``result`` to ``path``: ``.csv``/``.parquet`` hold the long form, ``.json`` the
    :func:`to_dict` form. The file appears whole or not at all (written next to it, then
    renamed)."""
    p = check_output_path(path)
    suffix = p.suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    os.close(fd)
    try:
        if suffix == ".json":
            Path(tmp).write_text(json.dumps(to_dict(result), indent=2) + "\n", encoding="utf-8")
        else:
            table = long(result.values, result.columns, result.bins)
            if suffix == ".csv":
                table.to_csv(tmp, index=False)
            else:
                table.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
