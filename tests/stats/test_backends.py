"""Every statistic on every backend that claims it, against numpy / `statistics` (the oracle).

One test body, parametrized over backends and party counts. MPC runs are batched: one
``mpc.run`` computes every statistic at once (``describe``), as users should.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from veil import stats
from veil.protocols.stats import spec as st

BINS = [-10.0, 0.0, 2.0, 4.0, 6.0, 30.0]
SIZES = {2: (20, 19), 3: (13, 14, 12)}  # N = 39: quartiles and the median are order statistics
# ckks: exact-rounded release, error <= P * 2^-25 per sufficient statistic
# (veil.protocols.stats.homomorphic)
TOL = {"paillier": 1e-8, "ckks": 1e-7, "mpc": 3e-3}


def _datasets(parties: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + parties)
    out = []
    for n in SIZES[parties]:
        f = rng.normal([3.0, -1.0], [2.0, 1.5], size=(n, 2))
        label = (f[:, 0] - 3 + 0.8 * f[:, 1] + rng.normal(0, 1, n) > -1).astype(float)
        out.append(np.column_stack([f, label]))
    return out


def _flat(v: object) -> np.ndarray:
    if isinstance(v, st.Regression):
        return np.append(v.coef, v.intercept)
    return np.asarray(v, dtype=np.float64).reshape(-1)


def _requested(backend: str) -> list[str]:
    return [s for s, backends in st.SUPPORT.items() if backend in backends]


@pytest.mark.parametrize(
    ("backend", "parties"),
    [("paillier", 2), ("paillier", 3), ("ckks", 2), ("ckks", 3), ("mpc", 3),
     pytest.param("mpc", 2, marks=pytest.mark.slow)],
)
def test_every_statistic_matches_the_plaintext_oracle(backend: str, parties: int) -> None:
    data = _datasets(parties)
    names = _requested(backend)
    kw = {"bins": BINS, "iterations": 5}
    res = stats.joint(data, names, backend=backend, paillier_bits=1024, allow_insecure=True,
                      timeout=240, **kw)
    oracle = stats.describe(np.concatenate(data), names, **kw)
    assert set(res.values) == set(names)
    for name in names:
        got, want = _flat(res[name]), _flat(oracle[name])
        assert got.shape == want.shape, name
        scale = max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max())
        tol = TOL[backend] * scale * (5 if name in ("logistic_regression",
                                                     "linear_regression") else 1)
        assert err <= tol, f"{backend}/{parties} {name}: error {err:.3g} > {tol:.3g}"
    assert res.bytes_sent > 0 and res.parties == parties
    if backend != "mpc":
        roles = {m[0] for m in res.messages}
        assert roles == {"key holder", "aggregator", *(f"owner{i}" for i in range(parties))}


def test_paillier_secure_default_key_size() -> None:
    data = _datasets(2)
    res = stats.joint(data, ["count", "mean", "variance"], backend="paillier")
    assert res["count"] == 39
    assert np.allclose(res["mean"], np.concatenate(data).mean(axis=0), atol=1e-9)
    # a 3072-bit Paillier ciphertext is 768 bytes; the public key message carries n (384 B)
    owner_msgs = [m for m in res.messages if m[2] == "encrypted statistics"]
    assert all(m[3] > 768 * 5 for m in owner_msgs)


@pytest.mark.parametrize("backend", ["paillier", "ckks", "mpc"])
def test_dp_release_on_every_backend_is_close_and_charged(backend: str) -> None:
    from veil.privacy import BudgetLedger

    rng = np.random.default_rng(11)
    data = []
    for _ in range(2):
        a = rng.uniform(0, 10, size=2000)
        data.append(np.column_stack([a, np.clip(a + rng.normal(0, 1, 2000), 0, 10)]))
    ledger = BudgetLedger(epsilon=2.0)
    res = stats.joint(data, ["count", "mean", "correlation"], backend=backend, epsilon=1.0,
                      bounds=(0, 10), ledger=ledger, dataset_names=["a", "b"],
                      paillier_bits=1024, allow_insecure=True, timeout=240)
    allx = np.concatenate(data)
    # measured spread over 40 releases at this size: count std ≈ 5, mean std ≈ 0.02,
    # correlation std ≈ 0.05 (×√2 under MPC, where both parties add noise); the bounds below
    # are ≥ 5 standard deviations
    assert abs(res["count"] - 4000) < 60
    assert np.allclose(res["mean"], allx.mean(axis=0), atol=0.3)
    assert res["correlation"][0, 1] > 0.6  # true value ≈ 0.99
    assert np.all(np.abs(res["correlation"]) <= 1.0)
    assert ledger.spent("a") == pytest.approx((1.0, 0.0))
    assert ledger.spent("b") == pytest.approx((1.0, 0.0))
    assert res.epsilon == 1.0


@given(cuts=hst.lists(hst.integers(12, 48), min_size=1, max_size=3, unique=True))
@settings(max_examples=6, deadline=None)
def test_result_does_not_depend_on_how_rows_are_split(cuts: list[int]) -> None:
    """Law: a joint release over any partition of the rows equals the pooled answer."""
    rng = np.random.default_rng(0)
    allx = rng.normal(size=(60, 2))
    parts = np.split(allx, sorted(cuts))
    parts = [p for p in parts if len(p)]
    if len(parts) < 2:
        return
    res = stats.joint(parts, ["count", "mean", "covariance"], backend="paillier",
                      paillier_bits=1024, allow_insecure=True, min_cohort=1)
    assert res["count"] == 60
    assert np.allclose(res["mean"], allx.mean(axis=0), atol=1e-9)
    assert np.allclose(res["covariance"], np.cov(allx, rowvar=False), atol=1e-8)


def _cli_job_runner(party, path):
    from veil.stats._party import job

    return job(party, source=path, columns="a,b", stats="count,mean,median_low",
               min_cohort="5")


@pytest.mark.slow
def test_party_job_for_veil_party_command(tmp_path) -> None:
    import pandas as pd

    from veil import mpc

    rng = np.random.default_rng(2)
    frames = [pd.DataFrame(rng.normal(size=(9, 2)), columns=["a", "b"]) for _ in range(2)]
    paths = []
    for i, f in enumerate(frames):
        paths.append(str(tmp_path / f"p{i}.csv"))
        f.to_csv(paths[-1], index=False)
    out = mpc.run(_cli_job_runner, parties=2, per_party_args=[(p,) for p in paths], timeout=240)
    allx = pd.concat(frames).to_numpy()
    assert out[0]["count"] == 18 and out[1]["count"] == 18
    assert np.allclose(out[0]["mean"], allx.mean(axis=0), atol=1e-3)
