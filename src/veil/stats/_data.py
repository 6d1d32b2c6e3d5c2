"""Turning user inputs (arrays, tensors, DataFrames, CSV files) into validated float64 tables."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import ConfigurationError

__all__ = ["load_table", "validate_datasets", "fingerprint", "check_distinct", "MAX_CSV_BYTES"]

MAX_CSV_BYTES = 2 * 1024**3


def _who(party: int | None, source: Any) -> str:
    label = f" ({source})" if isinstance(source, (str, os.PathLike)) else ""
    return f"party {party}{label}" if party is not None else f"the data{label}"


PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_csv(path: Path, who: str) -> Any:
    """A CSV file (or, by its suffix, a Parquet file) as a DataFrame, size-checked first."""
    if not path.is_file():
        kind = "Parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "CSV"
        raise ConfigurationError(f"{who}: no such {kind} file {str(path)!r}")
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise ConfigurationError(
            f"{who}: {path} is {size} bytes, over the {MAX_CSV_BYTES}-byte limit; split it")
    import pandas as pd

    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path, who)
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise ConfigurationError(f"{who}: cannot read {path} as CSV ({exc})") from exc


def _read_parquet(path: Path, who: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"{who}: reading {path} needs pyarrow (pip install 'veil[stats]'), or convert it "
            "to CSV") from exc
    try:
        return pq.read_table(path).to_pandas()
    except (ValueError, OSError, TypeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigurationError(f"{who}: cannot read {path} as Parquet ({exc})") from exc


def _as_frame(source: Any) -> Any:
    """A pandas DataFrame for DataFrame-like inputs (pandas, pyarrow.Table, polars), else None."""
    if type(source).__name__ == "DataFrame" and hasattr(source, "columns") and hasattr(
            source, "iloc"):
        return source
    if callable(getattr(source, "to_pandas", None)):  # pyarrow.Table, polars.DataFrame
        try:
            return source.to_pandas()
        except (TypeError, ValueError, ImportError) as exc:
            raise ConfigurationError(
                f"cannot convert the {type(source).__name__} to a table of numbers ({exc})"
            ) from exc
    return None


def _numeric_column(col: Any, name: str, who: str) -> np.ndarray:
    """One column as float64, or a clear error for categorical, text and other columns."""
    import pandas as pd

    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = [str(c) for c in list(dtype.categories[:4])]
        raise ConfigurationError(
            f"{who}: column {name!r} is categorical (categories {cats}"
            f"{' …' if len(dtype.categories) > 4 else ''}); encode it as numbers (one 0/1 "
            "column per category, or codes) or leave it out of the columns")
    kind = getattr(dtype, "kind", "O")
    if kind in "biuf":
        try:
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"{who}: column {name!r} (dtype {dtype}) cannot be read as numbers ({exc})"
            ) from exc
    if kind in "OSU" or pd.api.types.is_string_dtype(dtype):
        sample = next((v for v in col if isinstance(v, str)), None)
        if sample is not None:
            hint = (" (it looks like a number with a decimal comma: read the file with "
                    "decimal=',' or fix the export)" if _decimal_comma(sample) else "")
            raise ConfigurationError(
                f"{who}: column {name!r} holds text, e.g. {sample[:40]!r}{hint}; joint "
                "statistics take numeric columns: encode it or leave it out of the columns")
        raise ConfigurationError(
            f"{who}: column {name!r} is not numeric (dtype {dtype}); convert or drop it")
    raise ConfigurationError(
        f"{who}: column {name!r} has dtype {dtype}, which is not a number (dates and times: "
        "convert to a number, e.g. days since a reference date); convert or drop it")


def _decimal_comma(text: str) -> bool:
    t = text.strip().lstrip("+-")
    head, _, tail = t.partition(",")
    return bool(head) and head.isdigit() and bool(tail) and tail.isdigit()


def load_table(
    source: Any, columns: Sequence[str] | None = None, *, party: int | None = None
) -> tuple[np.ndarray, tuple[str, ...], bool]:
    """Return ``(rows × columns float64 array, column names, was_1d)`` for one party's data.

    Raises :class:`ConfigurationError` naming the party and the column for missing columns,
    non-numeric columns, NaN/inf values and empty tables.
    """
    who = _who(party, source)
    frame = None
    if isinstance(source, (str, os.PathLike)):
        frame = _read_csv(Path(source), who)
    else:
        frame = _as_frame(source)
    if frame is not None:
        names = [str(c) for c in frame.columns]
        if len(frame) == 0:
            raise ConfigurationError(
                f"{who} has no rows (only the header {names}); a joint computation needs data")
        wanted = list(names) if columns is None else [str(c) for c in columns]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ConfigurationError(
                f"{who} has no column {missing[0]!r}; its columns are {names}")
        out = np.empty((len(frame), len(wanted)))
        for j, c in enumerate(wanted):
            out[:, j] = _numeric_column(frame[c], c, who)
        arr, cols, was_1d = out, tuple(wanted), False
    else:
        if hasattr(source, "detach") and hasattr(source, "cpu"):
            source = source.detach().cpu().numpy()
        try:
            arr = np.asarray(source, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"{who}: expected numbers (array, tensor, DataFrame, CSV or Parquet path), got "
                f"{type(source).__name__}") from exc
        if arr.ndim == 0:
            raise ConfigurationError(
                f"{who}: expected a 1-D or 2-D table of numbers, got the single number "
                f"{float(arr):g}")
        was_1d = arr.ndim == 1
        if was_1d:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise ConfigurationError(
                f"{who}: expected a 1-D or 2-D table, got shape {tuple(int(n) for n in arr.shape)}")
        d = arr.shape[1]
        if columns is None:
            cols = ("x",) if was_1d else tuple(f"x{j}" for j in range(d))
        else:
            cols = tuple(str(c) for c in columns)
            if len(cols) != d:
                raise ConfigurationError(
                    f"{who} has {d} columns but {len(cols)} names were given ({list(cols)})")
    if arr.shape[0] == 0:
        raise ConfigurationError(f"{who} has no rows")
    bad = ~np.isfinite(arr)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        raise ConfigurationError(
            f"{who}: column {cols[j]!r} has {int(bad[:, j].sum())} missing or non-finite value(s) "
            f"(first at row {int(np.argmax(bad[:, j]))}); drop or impute them before a joint "
            "computation")
    return arr, cols, was_1d


def validate_datasets(
    datasets: Sequence[Any], columns: Sequence[str] | None
) -> tuple[list[np.ndarray], tuple[str, ...], bool]:
    """Load and check every party's data before any protocol starts (same columns everywhere)."""
    if isinstance(datasets, (str, os.PathLike)) or not isinstance(datasets, Sequence) or len(
        datasets
    ) < 2:
        raise ConfigurationError(
            "a joint computation needs a list of at least two datasets, one per party")
    tables = [load_table(src, columns, party=i) for i, src in enumerate(datasets)]
    first_cols = tables[0][1]
    for i, (arr, cols, _) in enumerate(tables[1:], 1):
        if cols != first_cols:
            extra = [c for c in cols if c not in first_cols] or [c for c in first_cols
                                                                 if c not in cols]
            raise ConfigurationError(
                f"party {i} has columns {list(cols)} but party 0 has {list(first_cols)} "
                f"(column {extra[0] if extra else cols[0]!r} differs); pass columns=[...] to pick "
                "the shared ones")
        if arr.shape[1] != tables[0][0].shape[1]:
            raise ConfigurationError(
                f"party {i} has {arr.shape[1]} columns, party 0 has {tables[0][0].shape[1]}")
    return [t[0] for t in tables], first_cols, all(t[2] for t in tables)


def _frame_digest(frame: Any, kind: str) -> str:
    """SHA-256 of a table made canonical: columns sorted by name, numbers as float64, other
    values as text, each row reduced to a 64-bit row hash (pandas' keyed SipHash over the
    row's values) and the row hashes sorted — so column order, row order, int/float spelling
    and CSV formatting do not change it. (Row-hash collisions can only make two different
    tables look equal: budgets merge, the safe direction.)"""
    import pandas as pd

    cols = sorted(frame.columns, key=str)
    canon = pd.DataFrame({str(c): (frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
                                   if getattr(frame[c].dtype, "kind", "O") in "biuf"
                                   and not isinstance(frame[c].dtype, pd.CategoricalDtype)
                                   else frame[c].astype(str)) for c in cols})
    h = hashlib.sha256(f"veil-table-v1\0{kind}\0{len(canon)}\0".encode())
    for c in canon.columns:
        h.update(f"{len(c)}:{c}:{canon[c].dtype.kind}\0".encode())
    if len(canon) and len(canon.columns):
        rows = np.sort(pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64))
        h.update(np.ascontiguousarray(rows, dtype="<u8").tobytes())
    return h.hexdigest()


def fingerprint(source: Any, table: np.ndarray | None = None) -> str:
    """Content fingerprint of one dataset (hex SHA-256), independent of how it is named.

    CSV files and DataFrames: every column (not only the ones a release uses), canonicalised
    (:func:`_frame_digest`), so a path spelled another way, a copy, a re-saved or shuffled file
    give the same fingerprint. Arrays and tensors: the float64 rows (in any order) and their
    shape; ``table`` (the validated array) is used when given. Used to key the privacy ledger
    and to refuse the same data passed twice.
    """
    if isinstance(source, (str, os.PathLike)):
        return _frame_digest(_read_csv(Path(source), f"the data ({source})"), "frame")
    frame = _as_frame(source)
    if frame is not None:
        return _frame_digest(frame, "frame")
    import pandas as pd

    if table is None:
        table, _cols, _ = load_table(source)
    arr = np.asarray(table, dtype=np.float64).reshape(len(table), -1)
    return _frame_digest(pd.DataFrame(arr, columns=[f"{j:06d}" for j in range(arr.shape[1])]),
                         "array")


def check_distinct(datasets: Sequence[Any], tables: Sequence[np.ndarray]) -> list[str]:
    """Refuse the same dataset passed twice (same resolved file, or same content); returns
    each dataset's :func:`fingerprint`."""
    seen_paths: dict[Path, int] = {}
    for i, src in enumerate(datasets):
        if isinstance(src, (str, os.PathLike)):
            real = Path(src).resolve()
            if real in seen_paths:
                raise ConfigurationError(
                    f"datasets {seen_paths[real]} and {i} are the same file ({str(real)!r}); "
                    "its rows would be counted twice: pass each party's dataset once")
            seen_paths[real] = i
    prints = [fingerprint(src, tab) for src, tab in zip(datasets, tables)]
    first: dict[str, int] = {}
    for i, fp in enumerate(prints):
        if fp in first:
            raise ConfigurationError(
                f"datasets {first[fp]} and {i} have identical content (SHA-256 {fp[:16]}…); "
                "the same rows would be counted twice: pass each party's dataset once")
        first[fp] = i
    return prints
