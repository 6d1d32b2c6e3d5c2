"""Minimum cohort for every recipient, checked before any value is decrypted, and the
differencing defence (the exact-release limit of the ledger).

The attacks (issue 12, item 5): party 0 holds 9 rows it knows and party 1 one row; with
``min_cohort=10`` the release of the mean used to pass and party 0 recovered party 1's row.
Two exact releases over 11 and 10 rows difference out the removed row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from veil import stats
from veil.errors import PolicyViolation
from veil.privacy import AuditLog, BudgetLedger, ReleasePolicy
from veil.protocols.stats import homomorphic as stats_he

HE = {"paillier_bits": 1024, "allow_insecure": True}
RNG = np.random.default_rng(5)
KNOWN = RNG.normal(50.0, 10.0, size=(9, 1))  # party 0's own rows
SECRET = np.array([[73.25]])  # party 1's single row


def test_the_rule_is_rows_of_other_parties_for_every_recipient() -> None:
    policy = ReleasePolicy(min_cohort=10)
    assert policy.allows(10) and not policy.allows(9)
    assert not policy.allows(10, own_rows=9)  # 9 + 1: party 0 sees 1 row of others
    assert policy.allows(19, own_rows=9)
    policy.check_recipients(40, [10, 20, 10])
    with pytest.raises(PolicyViolation, match=r"party 1 would learn an aggregate over 9 rows of "
                                              r"other parties \(it holds 20 of the 29\)"):
        policy.check_recipients(29, [10, 20], what="mean")
    with pytest.raises(PolicyViolation, match="over 9 rows"):
        policy.check_recipients(9, [])  # a recipient without rows (key holder, analyst)


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_nine_plus_one_attack_is_refused_before_any_value_is_decrypted(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The N=10 release passes a total-count rule, but party 0 would learn party 1's row."""
    opened: list[str] = []
    real_count, real_open = stats_he.KeyHolder.open_count, stats_he.KeyHolder.open

    def spy_count(self: stats_he.KeyHolder, message: bytes) -> float:
        opened.append("count")
        return real_count(self, message)

    def spy_open(self: stats_he.KeyHolder, message: bytes, **kw: object) -> np.ndarray:
        opened.append("values")
        return real_open(self, message, **kw)

    monkeypatch.setattr(stats_he.KeyHolder, "open_count", spy_count)
    monkeypatch.setattr(stats_he.KeyHolder, "open", spy_open)
    with pytest.raises(PolicyViolation, match=r"party 0 would learn an aggregate over 1 rows"):
        stats.joint([KNOWN, SECRET], ["mean"], backend=backend, min_cohort=10, **HE)
    assert opened == ["count"]  # the values ciphertext was never decrypted
    # the attack it stops: with the rule off, party 0 recovers the row exactly
    opened.clear()
    res = stats.joint([KNOWN, SECRET], ["mean"], backend=backend, min_cohort=1, **HE)
    assert opened == ["count", "values"]
    recovered = float(res["mean"][0]) * 10 - float(KNOWN.sum())
    assert recovered == pytest.approx(SECRET[0, 0], abs=1e-5)


def test_nine_plus_one_attack_is_refused_under_mpc(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Same attack on the MPC backend. The driver of a local run holds every dataset and
    refuses before any party starts (in the parties the exact rule is checked on shares before
    any value is opened: tests/leakage/test_min_cohort.py). A DP release checks its noisy count
    instead (an exact bit would not be DP); its refusal reaches the caller as a
    PolicyViolation, and a charged release that was refused is audited."""
    from veil import mpc

    real_run = mpc.run
    monkeypatch.setattr(mpc, "run", lambda *a, **k: pytest.fail("parties were started"))
    with pytest.raises(PolicyViolation, match="party 0 would learn an aggregate over 1 rows"):
        stats.joint([KNOWN, SECRET], ["mean"], backend="mpc", min_cohort=10)
    monkeypatch.setattr(mpc, "run", real_run)
    audit, ledger = AuditLog(tmp_path / "audit.jsonl"), BudgetLedger(epsilon=2.0)
    with pytest.raises(PolicyViolation, match="the minimum cohort is 60"):  # 10 ± noise rows
        stats.joint([KNOWN, SECRET], ["mean"], backend="mpc", min_cohort=60, audit=audit,
                    epsilon=1.0, bounds=(0, 100), ledger=ledger, dataset_names=["k", "s"],
                    timeout=240)
    assert ledger.spent("s") == pytest.approx((1.0, 0.0))
    entries = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["outcome"], e["error"]) for e in entries] == [("refused", "PolicyViolation")]


def test_every_party_needs_enough_rows_of_others() -> None:
    big, small = RNG.normal(size=(30, 1)), RNG.normal(size=(12, 1))
    res = stats.joint([big, small], ["count"], backend="paillier", min_cohort=12, **HE)
    assert res["count"] == 42
    with pytest.raises(PolicyViolation, match="party 0 .* 12 rows of other parties"):
        stats.joint([big, small], ["count"], backend="paillier", min_cohort=13, **HE)


def test_dp_releases_check_the_noisy_count_first(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = stats_he.KeyHolder.open
    monkeypatch.setattr(stats_he.KeyHolder, "open",
                        lambda self, m, **kw: opened.append("values") or real_open(self, m, **kw))
    x = RNG.uniform(0, 10, size=(30, 1))
    with pytest.raises(PolicyViolation):
        stats.joint([x, x[:5] + 1], ["mean"], backend="ckks", epsilon=5.0, bounds=(0, 10),
                    min_cohort=1000)
    assert opened == []


# -- differencing ----------------------------------------------------------------------------

def _sites() -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(40.0, 5.0, size=(120, 1)), RNG.normal(60.0, 5.0, size=(110, 1))


def test_differencing_works_without_a_ledger() -> None:
    """The attack the ledger stops: site B drops one row between two exact releases."""
    a, b = _sites()
    first = stats.joint([a, b], ["sum"], backend="paillier", **HE)
    second = stats.joint([a, b[1:]], ["sum"], backend="paillier", **HE)
    assert float(first["sum"][0] - second["sum"][0]) == pytest.approx(b[0, 0], abs=1e-6)


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_ledger_allows_one_exact_release_per_dataset(backend: str) -> None:
    a, b = _sites()
    ledger = BudgetLedger(epsilon=1.0)
    stats.joint([a, b], ["sum", "mean"], backend=backend, ledger=ledger,
                dataset_names=["site-a", "site-b"], **HE)
    assert ledger.exact_releases("site-b") == 1
    with pytest.raises(PolicyViolation, match=r"'site-b'.*released exactly 1 time.*"
                                              r"differentially private"):
        stats.joint([RNG.normal(size=a.shape), b[1:]], ["sum"], backend=backend,
                    ledger=ledger, dataset_names=["site-c", "site-b"], **HE)
    # the same rows under a new name are recognised by their content
    with pytest.raises(PolicyViolation, match="same content under another name"):
        stats.joint([RNG.normal(size=(120, 1)), b], ["sum"], backend=backend, ledger=ledger,
                    dataset_names=["site-d", "site-b-renamed"], **HE)
    # later releases of the dataset are DP (charged to the budget)
    res = stats.joint([a, b[1:]], ["count", "sum"], backend=backend, ledger=ledger,
                      dataset_names=["site-a", "site-b"], epsilon=0.5, bounds=(0, 100), **HE)
    assert ledger.spent("site-b") == pytest.approx((0.5, 0.0))
    assert abs(res["count"] - 229) < 60


def test_plain_releases_use_the_same_limit() -> None:
    x = RNG.normal(size=30)
    ledger = BudgetLedger(epsilon=1.0)
    stats.mean(x, ledger=ledger, dataset="clinic")
    with pytest.raises(PolicyViolation, match="'clinic'"):
        stats.mean(x[1:], ledger=ledger, dataset="clinic")
    more = BudgetLedger(epsilon=1.0, max_exact=2)
    stats.mean(x, ledger=more, dataset="clinic")
    stats.variance(x, ledger=more, dataset="clinic")
    with pytest.raises(PolicyViolation, match="max_exact=2"):
        stats.mean(x, ledger=more, dataset="clinic")


def test_refused_exact_release_records_nothing() -> None:
    x = RNG.normal(size=(20, 1))
    ledger = BudgetLedger(epsilon=1.0)
    with pytest.raises(PolicyViolation):  # cohort refusal happens before the record
        stats.mean(x[:3], ledger=ledger, dataset="tiny")
    assert ledger.exact_releases("tiny") == 0
