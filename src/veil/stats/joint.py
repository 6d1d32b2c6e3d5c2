"""``joint()``: run a whole joint-statistics release locally, one role per party.

* ``backend="mpc"``: one process per dataset (``veil.mpc.run``, plus the dealer); each party
  loads only its own dataset; see :mod:`veil.protocols.stats_mpc` for what is revealed.
* ``backend="paillier" | "ckks"``: data owners, an aggregator and a key holder as separate
  roles in this process; every message between them is serialized bytes, counted in
  :attr:`JointResult.messages`; see :mod:`veil.protocols.stats_he`.

Inputs are validated here before any protocol starts: missing values and mismatched columns raise
:class:`~veil.errors.ConfigurationError` naming the party and the column.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.privacy import AuditLog, BudgetLedger
from veil.privacy.policy import DEFAULT_MIN_COHORT
from veil.protocols import statistics as st
from veil.stats._data import validate_datasets
from veil.stats._release import Release, make_release, noise_in_units, to_plain

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

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


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
    iterations: int = 30,
    learning_rate: float = 1.0,
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

    Options as in :func:`veil.stats.describe`. ``dataset_names`` label the datasets in the ledger
    and audit log (default: the file path, or ``party<i>``); a DP release is charged to every
    dataset's budget before the protocol starts (all or nothing). ``paillier_bits`` below 3072
    need ``allow_insecure=True``. ``flood`` has no effect and is kept for compatibility: Paillier
    decrypts exactly, and the CKKS release is exact-rounded (statistics travel as integers on a
    ``2**-24`` grid and the key holder rounds the decrypted limbs, so no decryption noise reaches
    the results — stronger than noise flooding); see ``veil.protocols.stats_he``.
    """
    tables, cols, was_1d = validate_datasets(datasets, columns)
    release = make_release(
        stats, cols, backend=backend, bins=bins, quantiles_n=quantiles_n, method=method,
        target=target, iterations=iterations, learning_rate=learning_rate, bounds=bounds,
        epsilon=epsilon, delta=delta, mechanism=mechanism, min_cohort=min_cohort, ledger=ledger,
        audit=audit)
    names = list(dataset_names) if dataset_names is not None else [
        str(src) if isinstance(src, (str, os.PathLike)) else f"party{i}"
        for i, src in enumerate(datasets)]
    if len(names) != len(tables):
        raise ConfigurationError(
            f"dataset_names has {len(names)} names for {len(tables)} datasets")
    for name in names:
        release.check_budget(name)
    t0 = time.perf_counter()
    inner_seconds = None
    if backend == "mpc":
        values, nbytes, messages, inner_seconds = _run_mpc(datasets, tables, cols, release,
                                                           names, timeout)
    else:
        for name in names:
            release.charge(name)
        values, nbytes, messages = _run_he(tables, release, backend, paillier_bits,
                                           allow_insecure, flood)
    seconds = time.perf_counter() - t0
    release.log(parties=len(tables), backend=backend, rows=values.get("count")
                if release.dp is None else None, datasets=names)
    return JointResult(to_plain(values, was_1d), backend, len(tables), cols, seconds, nbytes,
                       messages, None if release.dp is None else release.dp.epsilon,
                       inner_seconds)


def _run_mpc(datasets: Sequence[Any], tables: list[np.ndarray], cols: tuple[str, ...],
             release: Release, names: list[str],
             timeout: float) -> tuple[dict, int, list, float]:
    from veil import mpc
    from veil.stats._party import joint_job

    mpc.preload("veil.stats._party")  # parties start with the statistics code loaded

    # paths travel as paths (each party reads its own file); arrays as the validated table
    sources = [src if isinstance(src, (str, os.PathLike)) else tab
               for src, tab in zip(datasets, tables)]
    # the ledger and audit log are the driver's: parties get a copy without them
    inner = Release(release.spec, release.policy, release.dp, None, None)
    for name in names:
        release.charge(name)
    results = mpc.run(joint_job, parties=len(tables), args=(),
                      per_party_args=[(src, list(cols), inner, name)
                                      for src, name in zip(sources, names)],
                      timeout=timeout)
    comm = [r["comm"] for r in results]
    messages = [(f"party{i}", "parties", "mpc", int(c.get("bytes_sent", 0)))
                for i, c in enumerate(comm)]
    inner = max(float(r["seconds"]) for r in results)
    return results[0]["values"], sum(m[3] for m in messages), messages, inner


def _run_he(tables: list[np.ndarray], release: Release, backend: str, bits: int,
            allow_insecure: bool, flood: bool) -> tuple[dict, int, list]:
    from veil.protocols import stats_he

    spec = release.spec
    wire = stats_he.Wire()
    holder = stats_he.KeyHolder(backend, paillier_bits=bits, allow_insecure=allow_insecure)
    public = holder.public_message()
    agg = stats_he.Aggregator(backend, wire.send("key holder", "aggregator", "public key",
                                                 public), allow_insecure=allow_insecure)
    for i, x in enumerate(tables):
        pub = wire.send("key holder", f"owner{i}", "public key", public)
        msg = stats_he.owner_message(backend, pub, st.local_aggregates(x, spec),
                                     allow_insecure=allow_insecure)
        agg.add(wire.send(f"owner{i}", "aggregator", "encrypted statistics", msg))
    if release.dp is not None:
        # noise on the statistics' own fixed-point grid, so it is added exactly
        bits_ = stats_he.PAILLIER_FRAC_BITS if backend == "paillier" else stats_he.CKKS_FRAC_BITS
        units = noise_in_units(release.groups(bits_))
        agg.add_noise(np.array(units, dtype=np.float64) * 2.0**-bits_)
    total = holder.open(wire.send("aggregator", "key holder", "aggregate",
                                  agg.result_message()), flood=flood)
    release.check_rows(float(total[0]))
    return st.finalize_linear(spec, total), wire.total_bytes, wire.messages
