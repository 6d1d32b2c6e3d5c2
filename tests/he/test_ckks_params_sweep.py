"""``CKKSParams.for_depth``: every set it returns builds, serializes, loads and computes.

Reported: ``for_depth(7, precision_bits=22, integer_bits=9)`` (the plan of digits-cnn-poly at 22
bits) gave N=8192 parameters whose public context failed ``CKKSContext.load`` ("does not match
its declared parameters"), and logits off by ~26. Causes: the load check compared differences of
the levels' bit counts with the declared prime sizes (a product of 22-bit primes well below
2**22 loses bits), and those primes lie up to 17% below 2**22, so TenSEAL's scale reset drifts
every level by up to 17%. ``for_depth`` now refuses such rings, naming a precision that works.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from veil.errors import ConfigurationError
from veil.he.lattice.ckks import CKKSContext
from veil.he.lattice.native import chain_primes
from veil.he.params import MAX_SCALE_DRIFT, CKKSParams

FAST = list(itertools.product((20, 22, 24, 26, 28, 30, 34, 40), (0, 9), range(1, 7)))
FULL = list(itertools.product(range(20, 41, 2), (0, 5, 9, 19), range(1, 7)))


def _round_trip(params: CKKSParams, rng: np.random.Generator) -> None:
    """Generate, load the public and secret contexts, multiply through every level with them."""
    ctx = CKKSContext.generate(params)
    pub = CKKSContext.load(ctx.public().serialize())
    sec = CKKSContext.load(ctx.serialize(include_secret_key=True, expose_secret=True))
    assert pub.key_id == sec.key_id == ctx.key_id and not pub.has_secret_key
    assert chain_primes(sec._native) == list(params.primes)
    x = rng.uniform(-0.9, 0.9, 64)
    t, exact = pub.encrypt(x, value_bound=1.0), x
    for _ in range(params.depth):
        y = rng.uniform(-0.9, 0.9, 64)
        t, exact = t * pub.encrypt(y, value_bound=1.0), exact * y
    assert t.levels_left == 0
    err = np.abs(sec.decrypt(t) - exact)
    # the tracked (key-dependent) bound plus TenSEAL's deterministic scale reset
    allowed = t.error_bound + params.scale_drift * np.abs(exact)
    worst = int(np.argmax(err / allowed))
    assert (err <= allowed).all(), (
        f"{params}: error {err[worst]:.3g} > {allowed[worst]:.3g} at slot {worst}")


def _sweep(grid: list[tuple[int, int, int]], max_degree: int) -> int:
    rng = np.random.default_rng(5)  # test data only
    built = 0
    for precision, integer, depth in grid:
        if precision + integer + 1 > 60:
            continue
        try:
            params = CKKSParams.for_depth(depth, precision_bits=precision, integer_bits=integer)
        except ConfigurationError as exc:  # refused: it must say why and what works
            assert "precision_bits >=" in str(exc) or "lower the depth" in str(exc), str(exc)
            continue
        assert params.depth == depth and params.security_bits >= 128
        assert params.scale_drift <= MAX_SCALE_DRIFT
        if params.poly_modulus_degree <= max_degree:
            _round_trip(params, rng)
            built += 1
    return built


def test_for_depth_sets_build_load_and_compute() -> None:
    assert _sweep(FAST, max_degree=8192) >= 25


@pytest.mark.slow
def test_for_depth_sets_build_load_and_compute_full_sweep() -> None:
    assert _sweep(FULL, max_degree=32768) >= 100


def test_reported_parameters_are_refused_with_a_working_alternative() -> None:
    with pytest.raises(ConfigurationError, match=r"16.9% below.*drift by up to 198% over 7 level.*"
                                                 r"precision_bits >= 28") as info:
        CKKSParams.for_depth(7, precision_bits=22, integer_bits=9)
    assert "N=8192" in str(info.value)
    ok = CKKSParams.for_depth(7, precision_bits=28, integer_bits=9)
    assert ok.poly_modulus_degree == 16384 and ok.scale_drift < MAX_SCALE_DRIFT
    with pytest.raises(ConfigurationError, match="precision_bits >= 25"):
        CKKSParams.for_depth(4, precision_bits=22, integer_bits=9)  # digits-mlp-poly's plan


def test_context_with_primes_far_below_their_size_loads() -> None:
    """The reported ring, built directly (it is still allowed): it now loads, public and secret."""
    params = CKKSParams(8192, (32,) + (22,) * 7 + (32,), 22)
    assert sum(p.bit_length() for p in params.primes) == params.total_bits == 218
    assert np.prod([float(p) for p in params.primes]) < 2.0**217  # the product lost a bit
    ctx = CKKSContext.generate(params)
    for blob in (ctx.public().serialize(),
                 ctx.serialize(include_secret_key=True, expose_secret=True)):
        loaded = CKKSContext.load(blob)
        assert loaded.params == params and chain_primes(loaded._native) == list(params.primes)


def test_too_few_primes_are_refused_before_seal() -> None:
    with pytest.raises(ConfigurationError, match=r"6 primes of 20 bits, but only 5"):
        CKKSParams(8192, (30,) + (20,) * 6 + (30,), 20)
    with pytest.raises(ConfigurationError, match="precision_bits >= 28"):
        CKKSParams.for_depth(6, precision_bits=20, integer_bits=9)
