"""Plaintext fall-through (the oracle), input validation and release controls without MPC."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hst

from veil import stats
from veil.errors import (
    ConfigurationError,
    PolicyViolation,
    PrivacyBudgetExceeded,
    UnsupportedOperationError,
)
from veil.privacy import AuditLog, BudgetLedger, verify

RNG = np.random.default_rng(7)
X = RNG.normal([40.0, 25.0, 1.0], [10.0, 4.0, 0.5], size=(60, 3))


def test_plain_matches_python_statistics_on_one_column() -> None:
    col = X[:, 0]
    values = col.tolist()
    assert stats.mean(col) == pytest.approx(statistics.fmean(values))
    assert stats.variance(col) == pytest.approx(statistics.variance(values))
    assert stats.pstdev(col) == pytest.approx(statistics.pstdev(values))
    assert stats.median(col) == pytest.approx(statistics.median(values))
    assert stats.median_low(col) == statistics.median_low(values)
    assert list(stats.quantiles(col, n=10)) == pytest.approx(statistics.quantiles(values, n=10))
    assert list(stats.quantiles(col, method="inclusive")) == pytest.approx(
        statistics.quantiles(values, method="inclusive"))
    assert stats.min(col) == min(values) and stats.max(col) == max(values)
    assert stats.count(col) == 60


def test_plain_matrices_and_regressions() -> None:
    out = stats.describe(X, ["covariance", "correlation", "linear_regression", "histogram"],
                         bins=[0, 20, 40, 60, 80])
    assert np.allclose(out["covariance"], np.cov(X, rowvar=False))
    assert np.allclose(out["correlation"], np.corrcoef(X, rowvar=False))
    reg = out["linear_regression"]
    sol = np.linalg.lstsq(np.column_stack([X[:, :2], np.ones(60)]), X[:, 2], rcond=None)[0]
    assert np.allclose(reg.coef, sol[:2]) and reg.intercept == pytest.approx(sol[2])
    assert out["histogram"][0].tolist() == np.histogram(X[:, 0], [0, 20, 40, 60, 80])[0].tolist()


def test_inputs_tensor_dataframe_and_csv_agree(tmp_path: Path) -> None:
    frame = pd.DataFrame(X, columns=["age", "bmi", "dose"])
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    want = X.mean(axis=0)
    for src in (X, torch.tensor(X), frame, str(path)):
        assert np.allclose(stats.mean(src, columns=None if not isinstance(src, (str, pd.DataFrame))
                                      else ["age", "bmi", "dose"]), want)
    assert stats.mean(frame, columns=["bmi"]) == pytest.approx(X[:, 1].mean())


@given(hst.lists(hst.floats(-1e3, 1e3), min_size=10, max_size=40))
def test_variance_is_shift_invariant_and_mean_is_equivariant(values: list[float]) -> None:
    x = np.array(values)
    assert stats.variance(x + 17.0) == pytest.approx(stats.variance(x), rel=1e-6, abs=1e-6)
    assert stats.mean(x + 17.0) == pytest.approx(stats.mean(x) + 17.0, rel=1e-9, abs=1e-9)
    assert stats.pvariance(3.0 * x) == pytest.approx(9.0 * stats.pvariance(x), rel=1e-9,
                                                     abs=1e-9)


def test_nan_is_rejected_naming_party_and_column() -> None:
    bad = X.copy()
    bad[5, 1] = np.nan
    frame = pd.DataFrame(bad, columns=["age", "bmi", "dose"])
    with pytest.raises(ConfigurationError, match=r"party 1.*'bmi'.*1 missing"):
        stats.joint([X, frame.to_numpy()], ["mean"], columns=["age", "bmi", "dose"],
                    backend="paillier")
    with pytest.raises(ConfigurationError, match=r"party 2: column 'bmi'"):
        stats.joint([X, X, frame], ["mean"], columns=["age", "bmi", "dose"])


def test_mismatched_columns_are_rejected_before_any_protocol(tmp_path: Path) -> None:
    a = pd.DataFrame(X, columns=["age", "bmi", "dose"])
    b = pd.DataFrame(X, columns=["age", "weight", "dose"])
    with pytest.raises(ConfigurationError, match=r"party 1 has no column 'bmi'"):
        stats.joint([a, b], ["mean"], columns=["age", "bmi"], backend="ckks")
    with pytest.raises(ConfigurationError, match=r"party 1 has columns .*'weight'"):
        stats.joint([a, b], ["mean"], backend="mpc")
    with pytest.raises(ConfigurationError, match=r"party 1 has columns .*column .x2. differs"):
        stats.joint([X, X[:, :2]], ["mean"])


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
@pytest.mark.parametrize("stat", ["median", "quantiles", "min", "max", "logistic_regression"])
def test_unsupported_statistics_name_the_backends_that_support_them(backend: str,
                                                                   stat: str) -> None:
    with pytest.raises(UnsupportedOperationError, match="backend='mpc'"):
        stats.joint([X, X], [stat], backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stats": ["mode"]}, "unknown statistic 'mode'"),
        ({"stats": ["histogram"]}, "bin edges"),
        ({"stats": ["histogram"], "bins": [3, 1]}, "increasing"),
        ({"stats": ["mean"], "epsilon": 1.0}, "bounds"),
        ({"stats": ["mean"], "backend": "rsa"}, "unknown backend"),
        ({"stats": ["quantiles"], "quantiles_n": 0}, "integer >= 1"),
        ({"stats": ["linear_regression"], "target": "nope"}, "target 'nope'"),
        ({"stats": ["mean"], "min_cohort": 0}, "min_cohort"),
    ],
)
def test_bad_requests_raise_configuration_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        stats.describe(X, **kwargs)


def test_dp_on_logistic_regression_is_refused() -> None:
    # DP order statistics are supported (tests/stats/test_dp_order.py); logistic regression not
    with pytest.raises(UnsupportedOperationError, match="differentially private"):
        stats.describe(X, ["logistic_regression"], epsilon=1.0, bounds=(0, 100))


def test_min_cohort_refuses_small_aggregates() -> None:
    with pytest.raises(PolicyViolation, match="9 rows.*minimum cohort is 10"):
        stats.mean(X[:9, 0])
    assert stats.mean(X[:9, 0], min_cohort=5) == pytest.approx(X[:9, 0].mean())
    with pytest.raises(PolicyViolation):
        stats.joint([X[:4], X[:5]], ["mean"], backend="paillier", paillier_bits=1024,
                    allow_insecure=True)


def test_plain_dp_release_is_noisy_clipped_charged_and_audited(tmp_path: Path) -> None:
    ledger = BudgetLedger(epsilon=1.0)
    audit = AuditLog(tmp_path / "audit.jsonl")
    big = np.concatenate([X[:, 0]] * 50)  # 3000 rows
    got = stats.describe(big, ["count", "mean"], epsilon=0.5, bounds=(0, 100), ledger=ledger,
                         dataset="clinic", audit=audit)
    assert abs(got["count"] - 3000) < 100
    assert abs(got["mean"] - big.mean()) < 2.0
    assert ledger.spent("clinic") == pytest.approx((0.5, 0.0))
    stats.describe(big, ["mean"], epsilon=0.5, bounds=(0, 100), ledger=ledger, dataset="clinic")
    with pytest.raises(PrivacyBudgetExceeded):
        stats.describe(big, ["mean"], epsilon=0.1, bounds=(0, 100), ledger=ledger,
                       dataset="clinic")
    report = verify(tmp_path / "audit.jsonl")
    assert report.ok and report.entries == 1


def test_dp_noise_has_the_calibrated_spread() -> None:
    """Over repeated releases the noisy count's spread matches the Laplace calibration."""
    x = np.full(200, 5.0)
    counts = [stats.count(x, epsilon=1.0, bounds=(0, 10)) for _ in range(300)]
    # count alone: scale = (1 + rounding unit 2^-32) / ε ≈ 1 -> std √2
    assert 1.1 < np.std(counts) < 1.8
    assert abs(np.mean(counts) - 200) < 0.4


def test_ckks_flood_is_accepted_and_changes_nothing() -> None:
    """The CKKS release is exact-rounded (no decryption noise to flood): same bits either way."""
    sites = [np.arange(20.0).reshape(10, 2) / 3, np.arange(20.0, 44.0).reshape(12, 2) / 7]
    plain = stats.describe(np.concatenate(sites), ["mean", "variance"])
    runs = [stats.joint(sites, ["mean", "variance"], backend="ckks", flood=flood)
            for flood in (True, False)]
    for key in ("mean", "variance"):
        assert runs[0][key].tobytes() == runs[1][key].tobytes()
        assert np.allclose(runs[0][key], plain[key], rtol=0, atol=1e-7)


# -- messages say what is wrong (issue 20, item 7) ---------------------------------------------

def test_header_only_csv_says_it_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("age,bmi\n")
    with pytest.raises(ConfigurationError,
                       match=r"has no rows \(only the header \['age', 'bmi'\]\)"):
        stats.mean(path, columns=["age"])


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_huge_values_say_they_exceed_the_backend_range(backend: str) -> None:
    big, ok = np.full((12, 1), 1e300), np.ones((12, 1))
    limit = r"2\^62" if backend == "paillier" else r"2\^48"
    for stat, what in (("mean", "the sum of column 'x0'"), ("variance", "a sum of squares")):
        with pytest.raises(ConfigurationError) as info:
            stats.joint([big, ok], [stat], backend=backend, paillier_bits=1024,
                        allow_insecure=True)
        msg = str(info.value)
        assert f"party 0: {what}" in msg and "range" in msg and "non-finite" not in msg
        assert re.search(limit, msg), msg


def test_numpy_numbers_in_messages_are_plain() -> None:
    with pytest.raises(ConfigurationError, match=r"got 0$"):
        stats.mean(X[:, 0], min_cohort=np.int64(0))
    with pytest.raises(ConfigurationError, match=r"got -1\.0$"):
        stats.mean(X[:, 0], epsilon=np.float64(-1.0), bounds=(0, 100))
    assert stats.mean(X[:, 0], min_cohort=np.int64(5)) == pytest.approx(X[:, 0].mean())
    with pytest.raises(ConfigurationError, match=r"got \[3\.0, 1\.0\]$"):
        stats.histogram(X[:, 0], bins=np.array([3.0, 1.0]))
    with pytest.raises(ConfigurationError, match=r"got 0$"):
        stats.quantiles(X[:, 0], n=np.int64(0))
    for kw in ({"bins": np.array([3.0, 1.0])}, {"quantiles_n": np.int64(0)},
               {"target": np.str_("zz")}, {"iterations": np.int64(-1)}):
        with pytest.raises(ConfigurationError) as info:
            stats.describe(X, ["histogram", "quantiles", "linear_regression"], **kw)
        assert "np." not in str(info.value), str(info.value)


def test_mpc_range_is_checked_before_any_party_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from veil import mpc

    def no_parties(*_a: object, **_k: object) -> None:
        raise AssertionError("parties were started for data that cannot be used")

    monkeypatch.setattr(mpc, "run", no_parties)
    big = X.copy()
    big[3, 1] = 1e6
    with pytest.raises(ConfigurationError, match=r"party 1: values up to 1e\+06 exceed the MPC "
                                                 r"backend's range .*bounds="):
        stats.joint([X[:30], big], ["mean"], backend="mpc")


# -- a DP release charged and then refused still leaves an audit record (issue 12, item 11) ----

def _audit_entries(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_charged_then_refused_dp_release_is_audited(tmp_path: Path) -> None:
    ledger = BudgetLedger(epsilon=3.0)
    audit = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(PolicyViolation):  # the noisy count is far below the minimum cohort
        stats.mean(X[:, 0], epsilon=1.0, bounds=(0, 100), ledger=ledger, dataset="clinic",
                   audit=audit, min_cohort=10**6)
    assert ledger.spent("clinic") == pytest.approx((1.0, 0.0))
    with pytest.raises(PolicyViolation):
        stats.joint([X[:30], X[30:]], ["mean"], backend="paillier", paillier_bits=1024,
                    allow_insecure=True, epsilon=1.0, bounds=(0, 100), ledger=ledger,
                    dataset_names=["a", "b"], audit=audit, min_cohort=10**6)
    entries = _audit_entries(tmp_path / "audit.jsonl")
    assert [e["outcome"] for e in entries] == ["refused", "refused"]
    assert [e["error"] for e in entries] == ["PolicyViolation"] * 2
    assert entries[0]["datasets"] == ["clinic"] and entries[1]["datasets"] == ["a", "b"]
    assert entries[1]["epsilon"] == 1.0 and entries[1]["rows"] is None
    assert verify(tmp_path / "audit.jsonl").ok
