"""Code that runs inside each MPC party process (SPMD): the in-job API and the CLI job."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, VeilError
from veil.protocols import statistics as st
from veil.protocols import stats_mpc
from veil.stats._data import load_table
from veil.stats._release import Release, noise_in_units

__all__ = ["party_release", "joint_job", "job"]


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


def party_release(party: Any, x: np.ndarray, release: Release, *, dataset: str,
                  to: Sequence[int] | None = None, error: Exception | None = None,
                  transcript: list | None = None) -> dict | None:
    """Run one release in this party; ``x`` is this party's validated rows."""
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
            party, x, release.spec, code=code, to=to, noise=noise, dp_frac_bits=frac_bits,
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


def joint_job(party: Any, source: Any, columns: Sequence[str], release: Release,
              dataset: str) -> dict[str, Any]:
    """Job used by :func:`veil.stats.joint` (backend 'mpc'): loads this party's own data."""
    t0 = time.perf_counter()
    x, _cols, _ = load_table(source, columns, party=party.rank)
    values = party_release(party, x, release, dataset=dataset)
    return {"values": values, "comm": party.comm_stats(), "seconds": time.perf_counter() - t0}


def job(party: Any, source: str, columns: str, stats: str, min_cohort: int | str = 10,
        epsilon: float | str | None = None, bounds: str | None = None) -> dict[str, Any] | None:
    """``veil party ... --job veil.stats._party:job --arg source=a.csv --arg columns=age,bmi
    --arg stats=mean,stdev [--arg min_cohort=10 --arg epsilon=1 --arg bounds=0:120]``.

    Each party passes its own CSV path. ``columns`` and ``stats`` are comma-separated; ``bounds``
    is ``"low:high"`` (all columns). Returns the statistics (revealed to all parties) as plain
    lists. Values arrive as strings from the command line and are converted here.
    """
    from veil import stats as api

    try:
        min_cohort = int(min_cohort)
        epsilon = None if epsilon in (None, "") else float(epsilon)
    except ValueError as exc:
        raise ConfigurationError(
            f"min_cohort must be an integer and epsilon a number, got {min_cohort!r}, "
            f"{epsilon!r}") from exc

    lo_hi = None
    if bounds:
        lo, hi = bounds.split(":")
        lo_hi = (float(lo), float(hi))
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    out = api.describe(source, [s.strip() for s in stats.split(",") if s.strip()], party=party,
                       columns=cols, min_cohort=min_cohort, epsilon=epsilon, bounds=lo_hi)
    return None if out is None else {k: _plain(v) for k, v in out.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, st.Regression):
        return {"coef": v.coef.tolist(), "intercept": v.intercept, "features": list(v.features)}
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
