"""Release controls and the one home of differential privacy: minimum cohort, DP mechanisms
and accounting, budget ledger, audit log.

* :class:`ReleasePolicy` refuses a release in which some recipient would see fewer than
  ``min_cohort`` rows contributed by the other parties (:mod:`veil.privacy.policy`).
* :mod:`veil.privacy.mechanisms`: exact discrete Laplace / Gaussian noise from the OS CSPRNG,
  and :func:`sample_gaussian` (float Box-Muller from the OS CSPRNG, for federated averaging).
* :class:`DPConfig` declares one differentially private statistics release (ε, δ, mechanism,
  bounds).
* :class:`FederatedDP` declares client-level DP of federated averaging (L2 clip, noise
  multiplier, δ, client sampling rate); :class:`RDPAccountant` accounts it
  (:mod:`veil.privacy.accountant`).
* :class:`BudgetLedger` refuses releases past a dataset's budget (keyed by declared name and
  content fingerprint) and exact releases past ``max_exact`` per dataset (differencing).
* :class:`AuditLog` / :func:`verify`: append-only, hash-chained record of every release (its
  HMAC key sealed at rest: :func:`veil.privacy.audit.new_key_file`).
* :func:`sign_record` / :func:`verify_record`: a released result signed by the identity that
  computed it (:mod:`veil.privacy.records`).

Imports only the standard library (numpy only inside :func:`sample_gaussian`, cryptography only
inside the key-file and record functions), so it is cheap to import.
"""

from __future__ import annotations

from veil.privacy.accountant import RDPAccountant
from veil.privacy.audit import AuditLog, AuditReport, verify
from veil.privacy.dp import DPConfig
from veil.privacy.federated import FederatedDP
from veil.privacy.ledger import BudgetLedger, Charge
from veil.privacy.mechanisms import (
    NoiseGroup,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_gaussian,
    sample_noise,
)
from veil.privacy.policy import DEFAULT_MIN_COHORT, ReleasePolicy
from veil.privacy.records import read_record, sign_record, verify_record, write_record

__all__ = [
    "AuditLog",
    "AuditReport",
    "verify",
    "DPConfig",
    "FederatedDP",
    "RDPAccountant",
    "BudgetLedger",
    "Charge",
    "NoiseGroup",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_noise",
    "sample_gaussian",
    "DEFAULT_MIN_COHORT",
    "ReleasePolicy",
    "sign_record",
    "verify_record",
    "write_record",
    "read_record",
]
