"""Release controls shared by the in-job API and the joint driver, read from the release's one
:class:`~veil.protocols.stats.options.Options`: policy, DP, ledger, audit; and the plain-data
(curator) release."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from veil.errors import PolicyViolation
from veil.privacy import AuditLog, BudgetLedger, DPConfig, ReleasePolicy
from veil.privacy.dp import Block
from veil.privacy.mechanisms import (
    NoiseGroup,
    gaussian_sigma2,
    laplace_scale,
    rho_for,
    sample_noise,
)
from veil.protocols.stats import dp_order
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import Options

__all__ = ["Release", "plain_release", "noise_in_units", "to_plain", "PLAIN_FRAC_BITS"]

PLAIN_FRAC_BITS = 32


@dataclass(frozen=True)
class Release:
    """A validated request (``spec``, which carries the release's
    :class:`~veil.protocols.stats.options.Options`) and its release controls.

    ``fingerprint``: content fingerprint of this party's dataset (in-job releases), used with
    the dataset's declared name to key the ledger."""

    spec: st.Spec
    fingerprint: str | None = None

    @property
    def options(self) -> Options:
        return self.spec.options

    @property
    def policy(self) -> ReleasePolicy:
        return self.spec.options.policy

    @property
    def dp(self) -> DPConfig | None:
        return self.spec.options.dp

    @property
    def ledger(self) -> BudgetLedger | None:
        return self.spec.options.ledger

    @property
    def audit(self) -> AuditLog | None:
        return self.spec.options.audit

    def for_party(self, dataset: str) -> Release:
        """The release one MPC party of :func:`veil.stats.joint` runs: its own dataset name,
        without the driver's ledger and audit log (:meth:`Options.for_party`)."""
        return Release(replace(self.spec, options=self.spec.options.for_party(dataset)))

    @property
    def what(self) -> str:
        return ", ".join(self.spec.stats)

    def check_rows(self, rows: float, own_rows: float = 0.0) -> None:
        """Minimum cohort for one recipient holding ``own_rows`` of the ``rows``."""
        self.policy.check_cohort(rows, what=self.what, own_rows=own_rows)

    def check_recipients(self, rows: float, own_rows: Sequence[float]) -> None:
        """Minimum cohort for every recipient: each party, and a recipient without rows."""
        self.policy.check_recipients(rows, own_rows, what=self.what)

    def groups(self, frac_bits: Sequence[int] | int) -> list[NoiseGroup]:
        if self.dp is None or self.spec.bounds is None:
            return []
        sens = st.sensitivities(self.spec, self.spec.bounds)
        bits = [frac_bits] * len(sens) if isinstance(frac_bits, int) else list(frac_bits)
        out: list[NoiseGroup] = []
        for (name, size, l1, l2), f in zip(sens, bits):
            out.extend(self.dp.calibrate([Block(name, size, l1, l2)], frac_bits=f))
        # calibrate splits the budget over the blocks it sees; we passed them one at a time,
        # so split here instead: scale every group as if ε (or ρ) were divided by the number
        # of blocks (the DP order-statistic searches, if any, count as one more block)
        return [_split_budget(g, self.blocks()) for g in out]

    def blocks(self) -> int:
        """Blocks the DP budget is split evenly over: the linear blocks, plus one for all
        order-statistic searches together."""
        return len(st.layout(self.spec)) + (1 if dp_order.dp_targets(self.spec) else 0)

    def order_groups(self) -> list[NoiseGroup]:
        """Per-query noise of the DP order-statistic searches, one group per target.

        The searches make ``ROUNDS·T`` adaptively chosen integer queries, each of sensitivity
        ``Δ = max(num, den - num)``; by composition each gets discrete Laplace noise of scale
        ``Δ·ROUNDS·T / (ε/k)`` (L1 sensitivity ROUNDS·T·Δ) or discrete Gaussian noise with
        ``σ² = Δ²·ROUNDS·T / (2ρ/k)`` (L2 sensitivity sqrt(ROUNDS·T)·Δ), ``k`` = :meth:`blocks`.
        """
        targets = dp_order.dp_targets(self.spec)
        if self.dp is None or not targets:
            return []
        queries, k = dp_order.ROUNDS * len(targets), self.blocks()
        if self.dp.mechanism == "laplace":
            return [NoiseGroup(t.key, 1, "laplace",
                               laplace_scale(t.sensitivity * queries, self.dp.epsilon) * k)
                    for t in targets]
        rho = rho_for(float(self.dp.epsilon), self.dp.delta)
        return [NoiseGroup(t.key, 1, "gaussian",
                           gaussian_sigma2(t.sensitivity, rho) * (queries * k))
                for t in targets]

    def charge(self, dataset: str, fingerprint: str | None = None) -> None:
        """With a ledger: spend a DP release's (ε, δ) on ``dataset``, or record an exact
        release (at most ``ledger.max_exact`` per dataset: the differencing defence)."""
        if self.ledger is None:
            return
        fp = fingerprint if fingerprint is not None else self.fingerprint
        if self.dp is not None:
            eps, delta = self.dp.cost()
            self.ledger.charge(dataset, epsilon=eps, delta=delta,
                               statistic=",".join(self.spec.stats), fingerprint=fp)
        else:
            self.ledger.record_exact(dataset, statistic=",".join(self.spec.stats),
                                     fingerprint=fp)

    def check_budget(self, dataset: str, fingerprint: str | None = None) -> None:
        """What :meth:`charge` would refuse, without charging."""
        if self.ledger is None:
            return
        fp = fingerprint if fingerprint is not None else self.fingerprint
        if self.dp is not None:
            eps, delta = self.dp.cost()
            self.ledger.check(dataset, epsilon=eps, delta=delta, fingerprint=fp)
        else:
            self.ledger.check_exact(dataset, fp)

    def log(self, *, parties: int, backend: str, rows: Any, datasets: Sequence[str],
            outcome: str = "released", error: BaseException | None = None) -> None:
        """Append the audit record. A release refused or failed after it was charged is
        logged too (``outcome="refused"`` for a policy refusal, ``"failed"`` otherwise, with
        the error's class name; never its message, which may hold values)."""
        if self.audit is None:
            return
        extra: dict[str, Any] = {"outcome": outcome}
        if error is not None:
            extra["error"] = type(error).__name__
        self.audit.append({
            "parties": parties, "datasets": list(datasets), "statistic": list(self.spec.stats),
            "columns": list(self.spec.columns), "backend": backend,
            "rows": None if rows is None else int(rows),
            "epsilon": None if self.dp is None else self.dp.epsilon,
            "delta": None if self.dp is None else self.dp.delta,
            "mechanism": None if self.dp is None else self.dp.mechanism,
            "min_cohort": self.policy.min_cohort,
            **extra,
        })

    def log_failure(self, exc: BaseException, *, parties: int, backend: str,
                    datasets: Sequence[str]) -> None:
        """Audit record of a release that was charged and then refused or failed."""
        outcome = "refused" if isinstance(exc, PolicyViolation) else "failed"
        self.log(parties=parties, backend=backend, rows=None, datasets=datasets,
                 outcome=outcome, error=exc)


def _split_budget(g: NoiseGroup, k: int) -> NoiseGroup:
    # Laplace: ε/k multiplies the scale by k; Gaussian: ρ/k multiplies σ² by k
    return NoiseGroup(g.name, g.size, g.mechanism, g.scale * k)


def plain_release(x: np.ndarray, release: Release, dataset: str) -> dict[str, Any]:
    """Local (central) release: the oracle, or a DP release by a curator holding all rows."""
    spec = release.spec
    if release.dp is None:
        release.check_rows(x.shape[0])  # the recipient of a curator's release holds no rows
        release.check_budget(dataset)
        release.charge(dataset)  # with a ledger: records the exact release
        out = st.plain_results(x, spec)
        release.log(parties=1, backend="plain", rows=x.shape[0], datasets=[dataset])
        return out
    release.check_budget(dataset)
    total = st.local_aggregates(x, spec)
    ints = [round(float(v) * 2.0**PLAIN_FRAC_BITS) for v in total]
    noise = noise_in_units(release.groups(PLAIN_FRAC_BITS))
    release.charge(dataset)
    try:
        noisy = np.array([(a + b) * 2.0**-PLAIN_FRAC_BITS for a, b in zip(ints, noise)])
        release.check_rows(float(noisy[0]))
        out = st.finalize_linear(spec, noisy)
        targets = dp_order.dp_targets(spec)
        if targets:  # the same noisy binary search as the MPC backend, with one "party"
            groups = release.order_groups()
            out.update(dp_order.plain_search(x, spec, targets, lambda: noise_in_units(groups)))
    except Exception as exc:  # charged, then refused: the audit log still says so
        release.log_failure(exc, parties=1, backend="plain", datasets=[dataset])
        raise
    release.log(parties=1, backend="plain", rows=None, datasets=[dataset])
    return out


def noise_in_units(groups: Sequence[NoiseGroup]) -> list[int]:
    return sample_noise(groups) if groups else []


def to_plain(values: dict[str, Any], was_1d: bool) -> dict[str, Any]:
    """Per-column arrays become floats / 1-D arrays when the input was a single column."""
    if not was_1d:
        return values
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in ("covariance", "correlation") or not isinstance(v, np.ndarray):
            out[k] = v
        elif k in ("histogram", "quantiles"):
            out[k] = v[0]
        else:
            out[k] = float(v[0])
    return out
