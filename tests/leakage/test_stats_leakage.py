"""Every MPC statistic opened to one party of three: the other two receive nothing that depends
on the data (see ``tests/leakage/harness.py`` for how a view is recorded and compared).

Datasets ``A`` and ``B`` have the same total row count (opened to everyone by the preflight)
but different values and different per-party row counts, so every recipient's outputs differ.
The default suite has one ``to=[r]`` case per statistic (the recipient rotating over the
cases); the full grid (every group of statistics, every recipient) is marked slow.

The HE backends (Paillier, CKKS through ``stats.joint(..., backend=...)``) have no ``to=`` in
the API: the key holder is the only recipient and the owners' and aggregator's views are
ciphertexts under its key; plug such a backend in by subclassing ``harness.Backend``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.leakage import harness

# three columns: x, z and a 0/1 label y (last column: the regressions' target)
_RNG = np.random.default_rng(12)


def _party(n: int, shift: float) -> np.ndarray:
    x = _RNG.uniform(0.0, 10.0, n) + shift
    z = 0.5 * x + _RNG.normal(0.0, 1.0, n)
    y = (x + _RNG.normal(0.0, 2.0, n) > 5.0 + shift).astype(float)
    y[:2] = [0.0, 1.0]  # both labels in every party's rows
    return np.column_stack([x, z, y])


A = [_party(6, 0.0), _party(5, 1.0), _party(5, 2.0)]  # N = 16
B = [_party(4, 3.0), _party(7, -1.0), _party(5, 0.5)]
COLUMNS = ["x", "z", "y"]
BASE = dict(columns=COLUMNS, min_cohort=1)

# (id, statistics, options); together they cover every MPC statistic
GROUPS = [
    ("linear", ["count", "mean", "variance", "stdev", "covariance", "correlation", "histogram"],
     dict(bins=[-5.0, 0.0, 5.0, 10.0, 20.0])),
    ("order", ["median", "quantiles"], dict(quantiles_n=4)),
    ("ols", ["linear_regression"], {}),
    ("logit", ["logistic_regression"], dict(iterations=3)),
]
DEFAULT_RECIPIENT = {"linear": 0, "order": 1, "ols": 2, "logit": 0}


def _cases():
    for gid, names, opts in GROUPS:
        for r in range(3):
            marks = () if DEFAULT_RECIPIENT[gid] == r else (pytest.mark.slow,)
            yield pytest.param(names, opts, r, id=f"{gid}-to{r}", marks=marks)


@pytest.mark.parametrize(("names", "opts", "recipient"), list(_cases()))
def test_non_recipients_receive_nothing_data_dependent(names, opts, recipient) -> None:
    views_a, views_b = harness.check_non_recipients(
        harness.MPCBackend(), A, B, names, [recipient], {**BASE, **opts})
    got_a, got_b = views_a[recipient].returned, views_b[recipient].returned
    assert set(got_a) >= set(names)
    assert got_a != got_b  # the outputs differ: equal views are not a trivial consequence


def test_the_harness_catches_the_reduce_opening() -> None:
    """Negative control: the old opening (CrypTen's reveal(dst), a gloo reduce) is flagged."""
    with pytest.raises(AssertionError, match="data-dependent non-random"):
        harness.check_non_recipients(harness.MPCBackend(leaky=True), A, B, ["mean"], [0], BASE)


def test_uniform_rule() -> None:
    small = harness.View(1, None, [harness.Message("recv", 0, np.array([5, 2**40], np.int64))])
    other = harness.View(1, None, [harness.Message("recv", 0, np.array([6, -2**41], np.int64))])
    assert any("non-random" in p for p in harness.compare_views(small, other))
    masked = harness.View(1, None, [harness.Message("recv", 0, np.array([2**50, 5], np.int64))])
    masked2 = harness.View(1, None, [harness.Message("recv", 0, np.array([-2**45, 5], np.int64))])
    assert harness.compare_views(masked, masked2) == []
    shaped = harness.View(1, None, [harness.Message("recv", 0, np.zeros(3, np.int64))])
    assert "traffic pattern" in harness.compare_views(masked, shaped)[0]


def test_the_minimum_cohort_check_shows_non_recipients_only_the_pass_bit() -> None:
    """min_cohort > 1: row counts are shared (per-party counts differ between A and B)."""
    views_a, _ = harness.check_non_recipients(harness.MPCBackend(), A, B, ["mean"], [1],
                                              {**BASE, "min_cohort": 5})
    assert views_a[1].returned["mean"] is not None


HE_STATS = ["count", "mean", "variance", "covariance", "correlation", "histogram",
            "linear_regression"]


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_he_non_key_holders_receive_only_ciphertexts_and_public_values(backend) -> None:
    """HE backends plug into the same body: the aggregator and the owners are non-recipients."""
    views_a, views_b = harness.check_non_recipients(
        harness.HEBackend(backend), A, B, HE_STATS, ["key holder"],
        {"columns": COLUMNS, "min_cohort": 1, "bins": [-5.0, 0.0, 5.0, 10.0, 20.0]})
    assert views_a[0].returned != views_b[0].returned
    assert any(m.opaque for m in views_a[1].messages)  # the aggregator saw ciphertexts
