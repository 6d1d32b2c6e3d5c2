"""``joint()``: run a whole joint-statistics release locally, one role per party.

* ``backend="mpc"``: one process per dataset (``veil.mpc.run``, plus the dealer); each party
  loads only its own dataset; see :mod:`veil.protocols.stats.secret` for what is revealed.
* ``backend="paillier" | "ckks"``: data owners, an aggregator and a key holder as separate
  roles in this process; every message between them is serialized bytes, counted in
  :attr:`JointResult.messages`; see :mod:`veil.protocols.stats.homomorphic`.

Inputs are validated here before any protocol starts: missing values and mismatched columns raise
:class:`~veil.errors.ConfigurationError` naming the party and the column.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, PolicyViolation
from veil.privacy import AuditLog, BudgetLedger
from veil.privacy.policy import DEFAULT_MIN_COHORT
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import LOGIT_ITERATIONS, Options
from veil.stats import frames
from veil.stats._data import check_distinct, validate_datasets
from veil.stats._release import Release, noise_in_units, to_plain

__all__ = ["JointResult", "joint"]


@dataclass
class JointResult:
    """Outputs of one joint release and what it cost."""

    values: dict[str, Any]
    backend: str
    parties: int
    columns: tuple[str, ...]
    seconds: float
    bytes_sent: int
    messages: list[tuple[str, str, str, int]] = field(default_factory=list)
    epsilon: float | None = None
    protocol_seconds: float | None = None  # MPC: slowest party's time inside the job
    bins: tuple[float, ...] | None = None  # the histogram's edges, when there is one

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def to_pandas(self, form: str = "wide") -> Any:
        """The release as a :class:`pandas.DataFrame`: ``form="wide"`` (statistic × column,
        like ``DataFrame.describe()``; quantile cut points as rows ``"25%"``, ...) or
        ``"long"`` (tidy: one row per released number, histograms, quantiles, matrices and
        regressions included). See :mod:`veil.stats.frames`; ``values`` keeps the raw arrays.
        """
        if form == "wide":
            return frames.wide(self.values, self.columns)
        if form == "long":
            return frames.long(self.values, self.columns, self.bins)
        raise ConfigurationError(f"form must be 'wide' or 'long', got {form!r}")

    to_frame = to_pandas

    def frame(self, name: str) -> Any:
        """One statistic in its natural shape: a Series per column, a square frame for
        covariance/correlation, bins (:class:`pandas.Interval`) or cut points × columns, or
        a Series of regression terms named after the target."""
        return frames.frame(self.values, self.columns, name, self.bins)

    def to_arrow(self) -> Any:
        """The long form as a :class:`pyarrow.Table` (for polars: ``polars.from_arrow``)."""
        try:
            import pyarrow as pa
        except ModuleNotFoundError as exc:
            raise ConfigurationError("to_arrow() needs pyarrow: pip install 'veil[stats]'"
                                     ) from exc
        return pa.Table.from_pandas(self.to_pandas("long"), preserve_index=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data: statistics keyed by column, plus backend, cost and ε."""
        return frames.to_dict(self)

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the release to ``.csv`` or ``.parquet`` (long form) or ``.json``."""
        return frames.write(self, path)


def joint(
    datasets: Sequence[Any],
    stats: Sequence[str] | str = ("count", "mean", "stdev"),
    *,
    backend: str = "mpc",
    columns: Sequence[str] | None = None,
    bins: Sequence[float] | None = None,
    quantiles_n: int = 4,
    method: str = "exclusive",
    target: str | None = None,
    iterations: int = LOGIT_ITERATIONS,
    learning_rate: float | None = None,
    bounds: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
    epsilon: float | None = None,
    delta: float = 0.0,
    mechanism: str = "laplace",
    min_cohort: int = DEFAULT_MIN_COHORT,
    ledger: BudgetLedger | None = None,
    dataset_names: Sequence[str] | None = None,
    audit: AuditLog | None = None,
    timeout: float = 120.0,
    paillier_bits: int = 3072,
    allow_insecure: bool = False,
    flood: bool = False,
) -> JointResult:
    """Compute ``stats`` over the union of ``datasets`` (one per party) with ``backend``.

    Options as in :func:`veil.stats.describe`. ``dataset_names`` are the datasets' declared
    names in the ledger and audit log; with a ``ledger`` they are required (one distinct name
    per dataset — never a file path or a position, which could be spelled differently to get a
    fresh budget), and every charge is also keyed by the dataset's content fingerprint. A DP
    release is charged to every dataset's budget before the protocol starts (all or nothing);
    with a ledger an exact release is recorded the same way and refused once a dataset had
    ``ledger.max_exact`` exact releases (the differencing defence). A release that was charged
    and then refused or failed still appends an audit record (``outcome``). Without a ledger,
    the audit log labels datasets by path or ``party<i>``.

    Every party's data is checked here before anything starts (missing values, columns, the
    MPC value range, the same file or content passed twice). The minimum cohort applies to
    every recipient: each party must see at least ``min_cohort`` rows of other parties (see
    :mod:`veil.privacy.policy`); Paillier/CKKS decrypt the row count first and check it
    before any value is decrypted. ``paillier_bits`` below 3072 need ``allow_insecure=True``.
    ``flood`` has no effect and is kept for compatibility: Paillier decrypts exactly, and the
    CKKS release is exact-rounded (see ``veil.protocols.stats.homomorphic``).
    """
    options = Options(
        backend=backend, bins=bins, quantiles_n=quantiles_n, method=method, target=target,
        iterations=iterations, learning_rate=learning_rate, bounds=bounds, epsilon=epsilon,
        delta=delta, mechanism=mechanism, min_cohort=min_cohort, ledger=ledger,
        dataset_names=dataset_names, audit=audit, timeout=timeout, paillier_bits=paillier_bits,
        allow_insecure=allow_insecure, flood=flood)
    return run_joint(datasets, stats, columns, options)


def run_joint(datasets: Sequence[Any], stats: Sequence[str] | str,
              columns: Sequence[str] | None, options: Options) -> JointResult:
    """:func:`joint` once its keywords are one :class:`Options`."""
    tables, cols, was_1d = validate_datasets(datasets, columns)
    release = Release(st.make_spec(stats, cols, options))
    prints = check_distinct(datasets, tables)
    names = _names(datasets, options.dataset_names, len(tables), options.ledger is not None)
    backend = options.backend
    if backend == "mpc":
        _check_mpc_range(tables, release)
        if release.dp is None:  # the rule the parties check on shares, here before they start
            release.check_recipients(float(sum(len(x) for x in tables)),
                                     [float(len(x)) for x in tables])
    for name, fp in zip(names, prints):
        release.check_budget(name, fp)
    t0 = time.perf_counter()
    inner_seconds = None
    charged = False

    def charge() -> None:
        nonlocal charged
        for name, fp in zip(names, prints):
            release.charge(name, fp)
        charged = True

    try:
        if backend == "mpc":
            values, nbytes, messages, inner_seconds = _run_mpc(datasets, tables, cols, release,
                                                               names, charge)
        else:
            charge()
            values, nbytes, messages = _run_he(tables, release)
    except Exception as exc:
        if charged:  # charged, then refused or failed: the audit log still records it
            release.log_failure(exc, parties=len(tables), backend=backend, datasets=names)
        raise
    seconds = time.perf_counter() - t0
    release.log(parties=len(tables), backend=backend, rows=values.get("count")
                if release.dp is None else None, datasets=names)
    return JointResult(to_plain(values, was_1d), backend, len(tables), cols, seconds, nbytes,
                       messages, None if release.dp is None else release.dp.epsilon,
                       inner_seconds, release.spec.bins)


def _names(datasets: Sequence[Any], given: Sequence[str] | None, count: int,
           ledger: bool) -> list[str]:
    if given is None:
        if ledger:
            raise ConfigurationError(
                "a ledger charges declared dataset names, never paths or positions: pass "
                f"dataset_names=[...] with one stable name for each of the {count} datasets")
        return [str(src) if isinstance(src, (str, os.PathLike)) else f"party{i}"
                for i, src in enumerate(datasets)]
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise ConfigurationError(
            f"dataset_names must be a list of {count} names, got {type(given).__name__}")
    names = list(given)
    if len(names) != count:
        raise ConfigurationError(f"dataset_names has {len(names)} names for {count} datasets")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ConfigurationError(f"dataset_names must be non-empty strings, got {bad[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigurationError(
            f"dataset_names must be distinct; {dup[0]!r} names more than one dataset")
    return names


def _check_mpc_range(tables: Sequence[np.ndarray], release: Release) -> None:
    """The MPC value range, checked here before any party process starts."""
    for i, x in enumerate(tables):
        big = float(np.abs(st.clip(x, release.spec)).max(initial=0.0))
        if big >= st.VALUE_LIMIT:
            raise ConfigurationError(
                f"party {i}: values up to {big:g} exceed the MPC backend's range "
                f"|x| < {st.VALUE_LIMIT:g} (2^15); rescale the columns, declare bounds=(low, "
                "high) to clip, or use backend='paillier'")


def _run_mpc(datasets: Sequence[Any], tables: list[np.ndarray], cols: tuple[str, ...],
             release: Release, names: list[str],
             charge: Callable[[], None]) -> tuple[dict, int, list, float]:
    from veil import mpc

    mpc.preload("veil.stats._party")  # parties start with the statistics code loaded

    # paths travel as paths (each party reads its own file); arrays as the validated table
    sources = [src if isinstance(src, (str, os.PathLike)) else tab
               for src, tab in zip(datasets, tables)]
    # the ledger and audit log are the driver's: each party gets a copy without them
    charge()
    results = mpc.run(_policy_job, parties=len(tables), args=(),
                      per_party_args=[(src, list(cols), release.for_party(name))
                                      for src, name in zip(sources, names)],
                      timeout=release.options.timeout)
    refused = [r["refused"] for r in results if "refused" in r]
    if refused:  # every party stops together on the (shared) policy bit
        raise PolicyViolation(refused[0])
    comm = [r["comm"] for r in results]
    messages = [(f"party{i}", "parties", "mpc", int(c.get("bytes_sent", 0)))
                for i, c in enumerate(comm)]
    inner = max(float(r["seconds"]) for r in results)
    return results[0]["values"], sum(m[3] for m in messages), messages, inner


def _policy_job(party: Any, source: Any, columns: Sequence[str],
                release: Release) -> dict[str, Any]:
    """:func:`veil.stats._party.joint_job`, with a policy refusal (which every party reaches
    together: it rests on values opened to all) returned as such instead of a party failure."""
    from veil.stats._party import joint_job

    try:
        return joint_job(party, source, columns, release)
    except PolicyViolation as exc:
        return {"refused": str(exc)}


def _run_he(tables: list[np.ndarray], release: Release) -> tuple[dict, int, list]:
    """Owners -> aggregator -> key holder. The row counts travel in their own ciphertext; the
    key holder decrypts it first, the cohort rule is checked for every recipient (the key
    holder, holding no rows, and each owner, told the count), and only then are the values
    decrypted."""
    from veil.protocols.stats import homomorphic as stats_he

    spec, o = release.spec, release.options
    backend, allow_insecure = o.backend, o.allow_insecure
    labels = _labels(spec)
    wire = stats_he.Wire()
    holder = stats_he.KeyHolder(backend, paillier_bits=o.paillier_bits,
                                allow_insecure=allow_insecure)
    public = holder.public_message()
    pub_agg = wire.send("key holder", "aggregator", "public key", public)
    counts = stats_he.SumAggregator(backend, pub_agg, allow_insecure=allow_insecure)
    values = stats_he.SumAggregator(backend, pub_agg, allow_insecure=allow_insecure)
    has_values = False
    for i, x in enumerate(tables):
        pub = wire.send("key holder", f"owner{i}", "public key", public)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            local = st.local_aggregates(x, spec)  # entry 0 is the row count
        try:
            stats_he.check_statistics(backend, local, labels)
        except ConfigurationError as exc:
            raise ConfigurationError(f"party {i}: {exc}") from None
        c_msg = stats_he.owner_message(backend, pub, local[:1], allow_insecure=allow_insecure)
        v_msg = (stats_he.owner_message(backend, pub, local[1:], allow_insecure=allow_insecure)
                 if local.size > 1 else None)
        counts.add(wire.send(f"owner{i}", "aggregator", "encrypted row count", c_msg))
        if v_msg is not None:
            values.add(wire.send(f"owner{i}", "aggregator", "encrypted statistics", v_msg))
            has_values = True
    if release.dp is not None:
        # noise on the statistics' own fixed-point grid, so it is added exactly
        bits_ = stats_he.PAILLIER_FRAC_BITS if backend == "paillier" else stats_he.CKKS_FRAC_BITS
        units = np.array(noise_in_units(release.groups(bits_)), dtype=np.float64) * 2.0**-bits_
        counts.add_noise(units[:1])
        if has_values:
            values.add_noise(units[1:])
    n = holder.open_count(wire.send("aggregator", "key holder", "aggregate row count",
                                    counts.result_message()))
    for i in range(len(tables)):  # every owner learns the (noisy) count and checks its own rule
        wire.send("key holder", f"owner{i}", "row count", np.float64(n).tobytes())
    release.check_recipients(n, [float(x.shape[0]) for x in tables])
    rest = np.zeros(0)
    if has_values:
        rest = holder.open(wire.send("aggregator", "key holder", "aggregate",
                                     values.result_message()), flood=o.flood)
    total = np.concatenate([[n], rest])
    return st.finalize_linear(spec, total), wire.total_bytes, wire.messages


def _labels(spec: st.Spec) -> list[str]:
    """Names of the sufficient statistics, for error messages."""
    cols = spec.columns
    out: list[str] = []
    for name, size in st.layout(spec):
        if name == "count":
            out.append("the row count")
        elif name == "sums":
            out.extend(f"the sum of column {c!r}" for c in cols)
        elif name == "products":
            out.extend(["a sum of squares or products of the columns"] * size)
        else:
            out.extend(["a histogram count"] * size)
    return out
