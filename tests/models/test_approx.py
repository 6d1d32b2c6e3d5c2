"""Polynomial approximations: stated max error holds on the whole domain; bad input rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError
from veil.models.approx import _FUNCTIONS, PolyActivation, approximate, functions

CASES = [(f, d, dom) for f in ("relu", "sigmoid", "tanh", "gelu")
         for d, dom in ((2, (-4.0, 4.0)), (4, (-6.0, 6.0)), (7, (-8.0, 8.0)))]


@pytest.mark.parametrize(("fn", "degree", "domain"), CASES)
def test_max_error_bound_holds_between_grid_points(fn, degree, domain):
    approx = approximate(fn, domain, degree)
    f, _ = _FUNCTIONS[fn]
    # points off the bound's grid: random plus the ends
    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.uniform(*domain, 50_000), np.array(domain)])
    err = np.abs(np.polynomial.Polynomial(approx.coeffs)(xs) - f(xs)).max()
    assert err <= approx.max_error
    assert approx.max_error < 1.05 * err + 1e-3  # and the bound is not vacuous


_FITS = {fn: approximate(fn, (-6, 6), 6) for fn in _FUNCTIONS}


@given(x=st.floats(-6, 6), fn=st.sampled_from(sorted(_FUNCTIONS)))
def test_bound_property(x, fn):
    approx = _FITS[fn]
    f, _ = _FUNCTIONS[fn]
    assert abs(approx(x) - float(f(np.array(x)))) <= approx.max_error


def test_higher_degree_is_more_accurate_for_smooth_functions():
    errs = [approximate("sigmoid", (-6, 6), d).max_error for d in (1, 3, 5, 7, 9)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 5e-3


def test_poly_activation_matches_the_fit_and_known_answer():
    approx = approximate("relu", (-4, 4), 2)
    # least-squares relu on [-4, 4]: symmetric, linear coefficient exactly 1/2
    assert approx.coeffs[1] == pytest.approx(0.5, abs=1e-9)
    mod = PolyActivation.from_approx(approx)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    assert torch.allclose(mod(x), approx(x))
    assert "max error" in repr(mod)


@pytest.mark.parametrize(
    ("args", "match"),
    [(("relu", (1, 1), 2), "low < high"), (("relu", (0, float("nan")), 2), "low < high"),
     (("relu", "ab", 2), "pair"), (("relu", (-1, 1), 0), "degree"),
     (("relu", (-1, 1), True), "degree"), (("softplus", (-1, 1), 2), "relu")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ConfigurationError, match=match):
        approximate(*args)


def test_poly_activation_rejects_bad_coeffs():
    with pytest.raises(ConfigurationError):
        PolyActivation([])
    with pytest.raises(ConfigurationError):
        PolyActivation([1.0, float("inf")])
    assert set(functions()) >= {"relu", "sigmoid", "tanh", "gelu"}
