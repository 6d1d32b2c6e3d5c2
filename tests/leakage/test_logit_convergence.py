"""Logistic regression converges by default and says whether it did (issue 20, item 5).

Oracle: Newton's method without regularisation (the maximum-likelihood fit) in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from veil import mpc
from veil.protocols.stats import secret as stats_mpc
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import LOGIT_ITERATIONS, Options


def _cli_like(n: int = 240, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    age, bmi = rng.normal(50, 12, n), rng.normal(27, 4, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(-11.89 + 0.49 * bmi + 0.02 * age)))
    return np.column_stack([age, bmi, y.astype(float)])


def _newton(x: np.ndarray) -> np.ndarray:
    a = np.column_stack([x[:, :-1], np.ones(len(x))])
    beta = np.zeros(a.shape[1])
    for _ in range(60):
        p = 1 / (1 + np.exp(-a @ beta))
        beta += np.linalg.solve(a.T @ (a * (p * (1 - p))[:, None]), a.T @ (x[:, -1] - p))
    return beta


def test_default_plain_fit_is_the_maximum_likelihood_estimate() -> None:
    x = _cli_like()
    fit = st.logistic_plain(x, st.make_spec(["logistic_regression"], ["age", "bmi", "y"]))
    want = _newton(x)
    assert fit.iterations == LOGIT_ITERATIONS == 100 and fit.converged is True
    assert np.allclose(np.append(fit.coef, fit.intercept), want, rtol=5e-3, atol=2e-3)
    short = st.logistic_plain(x, st.make_spec(["logistic_regression"], ["age", "bmi", "y"],
                                              Options(iterations=10)))
    assert short.converged is False  # too few steps: reported as not converged


def _job(party, x, iterations):
    spec = st.make_spec(["logistic_regression"], ["age", "bmi", "y"],
                        Options(iterations=iterations, min_cohort=1))
    return stats_mpc.run_release(party, x, spec)["logistic_regression"]


@pytest.mark.parametrize(("iterations", "converged"), [
    (8, False), pytest.param(100, True, marks=pytest.mark.slow)])
def test_mpc_fit_reports_convergence_and_matches_the_oracle(iterations, converged) -> None:
    x = _cli_like(120, seed=1)
    parts = [x[:60], x[60:]]
    res = mpc.run(_job, parties=2, per_party_args=[(p, iterations) for p in parts], timeout=600)
    plain = st.logistic_plain(x, st.make_spec(["logistic_regression"], ["age", "bmi", "y"],
                                              Options(iterations=iterations)))
    for fit in res:
        assert fit.iterations == iterations and fit.converged is converged
        assert plain.converged is converged
        got = np.append(fit.coef, fit.intercept)
        assert np.allclose(got, np.append(plain.coef, plain.intercept), atol=0.05 * 12)
        if converged:
            assert np.allclose(got, _newton(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("d", "rho"), [(2, 0.9), (4, 0.95), (8, 0.5)])
def test_default_step_converges_on_correlated_features(d, rho) -> None:
    """The automatic step 4/max(1, d) is 1/L for the worst case: correlated features converge
    (or report that they did not), they never diverge."""
    rng = np.random.default_rng(d)
    cov = np.full((d, d), rho) + np.eye(d) * (1 - rho)
    f = rng.multivariate_normal(np.zeros(d), cov, 3000) * np.arange(1, d + 1) * 3 + 40
    beta = rng.normal(0, 0.3, d) / np.arange(1, d + 1)
    y = rng.random(3000) < 1 / (1 + np.exp(-((f - 40) @ beta)))
    x = np.column_stack([f, y.astype(float)])
    cols = [f"f{i}" for i in range(d)] + ["y"]
    fit = st.logistic_plain(x, st.make_spec(["logistic_regression"], cols, Options(iterations=400)))
    assert fit.converged is True
    assert np.allclose(np.append(fit.coef, fit.intercept), _newton(x), atol=1e-3)
