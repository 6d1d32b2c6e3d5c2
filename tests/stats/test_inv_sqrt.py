"""The MPC inverse square root used for correlations, against numpy over its whole range."""

from __future__ import annotations

import numpy as np
import torch

from veil import mpc
from veil.protocols.stats.shares import inv_sqrt, open_to_all

VALUES = [4.0**-8, 0.001, 0.3, 1.0, 3.99, 4.0, 17.0, 1234.5, 65536.0, 3.0e6, 4.0**15 * 3.9]


def _job(party):
    v = party.share(torch.tensor(VALUES, dtype=torch.float64) if party.rank == 0 else None,
                    src=0, shape=(len(VALUES),))
    return open_to_all(party, inv_sqrt(v))


def test_inv_sqrt_matches_numpy_across_its_range():
    got = mpc.run(_job, parties=3, timeout=120)[0]
    v = np.array(VALUES)
    want = 1.0 / np.sqrt(v)
    # fixed point with 16 fractional bits: the input itself moves by up to 2^-16 (which moves
    # 1/sqrt(v) by 0.5 v^-1.5 2^-16), plus relative 1e-3, plus a few output units
    tol = 1e-3 * want + 0.5 * v**-1.5 * 2.0**-16 + 4 * 2.0**-16
    assert np.all(np.abs(got - want) <= tol), (got, want)


def _corr_job(party, x):
    from veil.protocols.stats import spec as st
    from veil.protocols.stats.options import Options
    from veil.protocols.stats.secret import run_release

    spec = st.make_spec(["correlation"], ["a", "b", "c"], Options(min_cohort=1))
    return run_release(party, np.asarray(x), spec)["correlation"]


def test_mpc_correlation_diagonal_is_exactly_one():
    rng = np.random.default_rng(3)
    data = [rng.normal(50.0, 12.0, size=(20, 3)) * [1.0, 0.01, 100.0] for _ in range(2)]
    got = mpc.run(_corr_job, parties=2, per_party_args=[(d,) for d in data], timeout=120)
    want = np.corrcoef(np.concatenate(data).T)
    for corr in got:
        assert np.all(np.diag(corr) == 1.0), np.diag(corr)
        assert np.allclose(corr, want, atol=1e-3)
