"""Budget ledger, minimum cohort and the hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.errors import ConfigurationError, PolicyViolation, PrivacyBudgetExceeded
from veil.privacy import AuditLog, BudgetLedger, ReleasePolicy, verify


def test_ledger_refuses_past_the_budget_and_spends_nothing_on_refusal() -> None:
    ledger = BudgetLedger(epsilon=1.0, delta=1e-6)
    ledger.charge("site-a", epsilon=0.4)
    ledger.charge("site-a", epsilon=0.6)
    with pytest.raises(PrivacyBudgetExceeded, match="site-a"):
        ledger.charge("site-a", epsilon=0.01)
    assert ledger.spent("site-a") == pytest.approx((1.0, 0.0))
    ledger.charge("site-b", epsilon=1.0, delta=1e-6)  # budgets are per dataset
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge("site-b", epsilon=0.0, delta=1e-7)


def test_ledger_persists_across_instances_and_checks_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    BudgetLedger(path, epsilon=1.0).charge("d", epsilon=0.75, statistic="mean")
    again = BudgetLedger(path, epsilon=1.0)
    assert again.remaining("d") == pytest.approx((0.25, 0.0))
    with pytest.raises(PrivacyBudgetExceeded):
        again.charge("d", epsilon=0.5)
    with pytest.raises(ConfigurationError, match="budget"):
        BudgetLedger(path, epsilon=5.0)  # cannot reopen with a bigger budget


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_ledger_rejects_bad_amounts(bad: float) -> None:
    with pytest.raises(ConfigurationError):
        BudgetLedger(epsilon=1.0).charge("d", epsilon=bad)


def test_min_cohort() -> None:
    ReleasePolicy().check_cohort(10)
    with pytest.raises(PolicyViolation, match="minimum cohort is 10"):
        ReleasePolicy().check_cohort(9)
    with pytest.raises(PolicyViolation):
        ReleasePolicy(min_cohort=50).check_cohort(49.5)
    with pytest.raises(ConfigurationError):
        ReleasePolicy(min_cohort=0)


def _log(tmp_path: Path, n: int = 5, key: bytes | None = None) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append({"parties": 3, "statistic": f"mean#{i}", "backend": "mpc", "rows": 100 + i,
                    "epsilon": None})
    return path


def test_audit_chain_verifies(tmp_path: Path) -> None:
    report = verify(_log(tmp_path))
    assert report.ok and report.entries == 5 and report.anchored


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


@pytest.mark.parametrize("attack", ["edit", "reorder", "delete_middle", "truncate", "insert"])
def test_audit_detects_tampering(tmp_path: Path, attack: str) -> None:
    path = _log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    if attack == "edit":
        entry = json.loads(lines[2])
        entry["rows"] = 7
        lines[2] = json.dumps(entry) + "\n"
    elif attack == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif attack == "delete_middle":
        del lines[2]
    elif attack == "truncate":
        del lines[-1]
    else:
        lines.insert(1, lines[1])
    _rewrite(path, lines)
    report = verify(path)
    assert not report.ok
    assert report.problems


def test_audit_with_key_detects_a_recomputed_chain(tmp_path: Path) -> None:
    key = b"k" * 32
    path = _log(tmp_path, key=key)
    assert verify(path, key=key).ok
    assert not verify(path).ok  # verifying an HMAC chain without the key fails
    # an attacker without the key rebuilds a consistent keyless chain with an edit
    forged = tmp_path / "forged.jsonl"
    AuditLog(forged).append({"statistic": "mean", "rows": 1})
    assert not verify(forged, key=key).ok


def test_audit_rejects_reserved_fields_and_non_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(ConfigurationError):
        log.append({"hash": "x"})
    with pytest.raises(ConfigurationError):
        log.append({"value": float("nan")})
    assert not (tmp_path / "a.jsonl").exists() or verify(tmp_path / "a.jsonl").entries == 0
