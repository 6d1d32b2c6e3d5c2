"""Code that runs one release of one table: plain data (the oracle, or a curator's DP
release), or this party's rows inside an MPC job (SPMD); plus the ``veil party`` stats job."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, VeilError
from veil.privacy import AuditLog, BudgetLedger
from veil.protocols.stats import secret as stats_mpc
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import Options
from veil.stats._data import fingerprint, load_table
from veil.stats._release import Release, noise_in_units, plain_release, to_plain

__all__ = ["describe_table", "party_release", "joint_job", "job", "parse_job_args", "JobArgs"]


def _local_code(x: np.ndarray, release: Release, dataset: str) -> tuple[int, Exception | None]:
    if np.abs(st.clip(x, release.spec)).max(initial=0.0) >= st.VALUE_LIMIT:
        return 2, ConfigurationError(
            f"values up to {float(np.abs(x).max()):g} exceed the MPC backend's range "
            f"±{st.VALUE_LIMIT:g}; rescale the columns (or declare bounds=... to clip)")
    try:
        release.check_budget(dataset)
    except VeilError as exc:
        return 3, exc
    return 0, None


def describe_table(data: Any, stats: Sequence[str] | str, *, party: Any,
                   columns: Sequence[str] | None, options: Options) -> dict[str, Any] | None:
    """:func:`veil.stats.describe` once its keywords are one :class:`Options`: plain data
    (``party`` None) or this party's rows in an MPC job; ``None`` on parties outside ``to``."""
    error: Exception | None = None
    try:
        x, cols, was_1d = load_table(data, columns, party=None if party is None else party.rank)
    except ConfigurationError as exc:
        if party is None:
            raise
        error, was_1d = exc, False
        cols = tuple(columns) if columns is not None else ("x",)
        x = np.zeros((0, len(cols)))
    release = Release(st.make_spec(stats, cols, options))
    if release.ledger is not None:
        if not isinstance(options.dataset, str) or not options.dataset:
            raise ConfigurationError(
                "a ledger charges a declared dataset name, never a path or a position: pass "
                f"dataset='...' (a stable name for this data), got {options.dataset!r}")
        if error is None:
            release = replace(release, fingerprint=fingerprint(data, x))
    if party is None:
        return to_plain(plain_release(x, release, options.dataset or "local"), was_1d)
    out = party_release(party, x, release, error=error)
    return None if out is None else to_plain(out, was_1d)


def party_release(party: Any, x: np.ndarray, release: Release, *,
                  error: Exception | None = None, transcript: list | None = None) -> dict | None:
    """Run one release in this party; ``x`` is this party's validated rows. The ledger and
    audit log charge ``release.options.dataset`` (``"local"`` when not named); the results
    go to ``release.options.to``."""
    dataset = release.options.dataset or "local"
    code, mine = (4, error) if error is not None else _local_code(x, release, dataset)
    frac_bits = stats_mpc.block_frac_bits(release.spec) if release.dp is not None else None
    noise = None
    draw = None
    if frac_bits is not None:
        noise = noise_in_units(release.groups(frac_bits))
        order_groups = release.order_groups()
        draw = (lambda: noise_in_units(order_groups)) if order_groups else None
    x = np.zeros((0, release.spec.d)) if mine is not None else x
    try:
        out = stats_mpc.run_release(
            party, x, release.spec, code=code, noise=noise, dp_frac_bits=frac_bits,
            check_rows=release.check_rows, before_release=lambda: release.charge(dataset),
            transcript=transcript, dp_order_noise=draw)
    except ConfigurationError:
        if mine is not None:
            raise mine from None
        raise
    if out is not None:
        release.log(parties=party.world_size, backend="mpc", rows=out.get("count"),
                    datasets=[dataset])
    return out


def joint_job(party: Any, source: Any, columns: Sequence[str],
              release: Release) -> dict[str, Any]:
    """Job used by :func:`veil.stats.joint` (backend 'mpc'): loads this party's own data."""
    t0 = time.perf_counter()
    x, _cols, _ = load_table(source, columns, party=party.rank)
    values = party_release(party, x, release)
    return {"values": values, "comm": party.comm_stats(), "seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class JobArgs:
    """The stats job's ``--arg key=value`` strings, parsed and checked: the data, the
    statistics and the release :class:`Options`."""

    source: str
    columns: list[str]
    stats: list[str]
    options: Options


def parse_job_args(source: str, columns: str, stats: str, min_cohort: int | str = 10,
                   epsilon: float | str | None = None, bounds: str | None = None,
                   delta: float | str = 0.0, ledger: str | None = None,
                   dataset_name: str | None = None, budget: float | str = 1.0,
                   budget_delta: float | str = 0.0, audit: str | None = None) -> JobArgs:
    """Check the stats job's arguments on this host, before any party joins the session.

    Each message names the ``--arg`` to fix; it stays on this host (nothing is sent yet).
    """
    def number(name: str, value: Any, kind: Callable[[Any], Any] = float) -> Any:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"--arg {name}= must be a number, got {value!r}") from None

    lo_hi = None
    if bounds:
        lo, sep, hi = str(bounds).partition(":")
        if not sep:
            raise ConfigurationError(f"--arg bounds= must be low:high (e.g. 0:120), got {bounds!r}")
        lo_hi = (number("bounds", lo), number("bounds", hi))
    cols = [c.strip() for c in str(columns).split(",") if c.strip()]
    names = [s.strip() for s in str(stats).split(",") if s.strip()]
    if not cols or not names:
        raise ConfigurationError("--arg columns= and --arg stats= take comma-separated names, "
                                 f"got columns={columns!r}, stats={stats!r}")
    path = Path(source)
    if not path.is_file():
        raise ConfigurationError(f"--arg source={source}: no such file" if not path.exists()
                                 else f"--arg source={source}: not a regular file")
    load_table(str(path), cols)  # unreadable CSV, missing or non-numeric columns: say so now
    for flag, value in (("ledger", ledger), ("audit", audit)):
        if value and not Path(value).parent.is_dir():
            raise ConfigurationError(f"--arg {flag}={value}: directory "
                                     f"{Path(value).parent} does not exist")
    if ledger and not dataset_name:
        raise ConfigurationError("--arg ledger= charges a declared dataset name, never a path: "
                                 "add --arg dataset_name=NAME (a stable name for this data)")
    book = BudgetLedger(ledger, epsilon=number("budget", budget),
                        delta=number("budget_delta", budget_delta)) if ledger else None
    log = AuditLog(audit) if audit else None
    if log is not None:
        log.check()  # before the release, not after it
    return JobArgs(source=str(path), columns=cols, stats=names, options=Options(
        min_cohort=number("min_cohort", min_cohort, int),
        epsilon=None if epsilon in (None, "") else number("epsilon", epsilon),
        delta=number("delta", delta), bounds=lo_hi, ledger=book,
        dataset=dataset_name or None, audit=log))


def job(party: Any, source: str, columns: str, stats: str, min_cohort: int | str = 10,
        epsilon: float | str | None = None, bounds: str | None = None,
        delta: float | str = 0.0, ledger: str | None = None, dataset_name: str | None = None,
        budget: float | str = 1.0, budget_delta: float | str = 0.0,
        audit: str | None = None) -> dict[str, Any] | None:
    """``veil party ... --job stats --arg source=a.csv --arg columns=age,bmi
    --arg stats=mean,stdev [--arg min_cohort=10 --arg epsilon=1 --arg bounds=0:120
    --arg ledger=budget.jsonl --arg dataset_name=clinic-a --arg audit=audit.log]``.

    Each party passes its own CSV path (and its own ledger and audit log: with ``ledger`` every
    release is charged to ``dataset_name`` there, as :func:`veil.stats.describe` does).
    ``columns`` and ``stats`` are comma-separated; ``bounds`` is ``"low:high"`` (all columns).
    Returns the statistics (revealed to all parties) as plain lists. Values arrive as strings
    from the command line and are converted by :func:`parse_job_args` (which ``veil party``
    also runs before joining, see :data:`job`'s ``preflight``).
    """
    a = parse_job_args(source, columns, stats, min_cohort, epsilon, bounds, delta, ledger,
                       dataset_name, budget, budget_delta, audit)
    out = describe_table(a.source, a.stats, party=party, columns=a.columns, options=a.options)
    return None if out is None else {k: _plain(v) for k, v in out.items()}


job.preflight = parse_job_args  # type: ignore[attr-defined]  # run by `veil party` up front


def _plain(v: Any) -> Any:
    if isinstance(v, st.Regression):
        return {"coef": v.coef.tolist(), "intercept": v.intercept, "features": list(v.features)}
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
