"""CKKSParams / BFVParams: HE-standard security table, presets, validation, descriptions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError, InsecureParametersError
from veil.he import serialize
from veil.he.params import MAX_LOG_Q, BFVParams, CKKSParams, batching_prime, is_prime


def test_default_ckks_preset() -> None:
    p = CKKSParams.default()
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits) == (8192, (60, 40, 40, 60),
                                                                            40)
    assert p.slots == 4096 and p.depth == 2 and p.security_bits == 128
    assert p.integer_bits == 19 and p.max_abs_value == 2.0**19


@pytest.mark.parametrize(("n", "limit"), [(2048, 54), (4096, 109), (8192, 218), (16384, 438),
                                          (32768, 881)])
def test_he_standard_table_boundary(n: int, limit: int) -> None:
    assert MAX_LOG_Q[128][n] == limit
    # exactly at the limit is fine; one bit more is refused with a helpful message
    first = min(60, limit - 30)
    rest = limit - first
    at = _bits_summing_to(limit)
    CKKSParams(n, at, at[1] if len(at) > 2 else 20)
    over = _bits_summing_to(limit + 1)
    with pytest.raises(InsecureParametersError) as info:
        CKKSParams(n, over, over[1] if len(over) > 2 else 20)
    msg = str(info.value)
    assert str(limit + 1) in msg and str(limit) in msg and "allow_insecure=True" in msg
    assert rest >= 0


def _bits_summing_to(total: int) -> tuple[int, ...]:
    """Valid CKKS-shaped sizes (q0, s, ..., s, special) with the given total (s = 30 or 20)."""
    for s in (30, 20):
        for k in range(0, 40):
            rest = total - k * s
            if rest % 2 == 0 and 2 * 20 <= rest <= 120:
                q = rest // 2
                if q >= s and q <= 60:
                    return (q,) + (s,) * k + (q,)
            if rest % 2 == 1 and 2 * 20 < rest <= 120:
                q = rest // 2
                if q > s and q + 1 <= 60:
                    return (q,) + (s,) * k + (q + 1,)
    raise AssertionError(total)


def test_allow_insecure_must_be_passed_by_name() -> None:
    with pytest.raises(TypeError):
        CKKSParams(4096, (60, 40, 40, 60), 40, True)  # type: ignore[misc]
    p = CKKSParams(4096, (60, 40, 40, 60), 40, allow_insecure=True)
    assert p.security_bits == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((1000, (60, 40, 60), 40), "power of two"),
        ((8192, (60,), 40), "at least 2 primes"),
        ((8192, (60, 61, 60), 40), "[1]"),
        ((8192, (60, 40, 60), 60), "scale_bits"),
        ((8192, (60, 30, 60), 40), "must equal scale_bits"),
        ((8192, (60, 40, 40), 40), "special prime"),
        ((8192, (60, 40, 60), 40), "ok"),
        ((8192, (60, 40, 50), 40), "special prime"),
        ((8192, "abc", 40), "[0]"),
        ((True, (60, 40, 60), 40), "power of two"),
    ],
)
def test_invalid_ckks_params(args: tuple, fragment: str) -> None:
    if fragment == "ok":
        CKKSParams(*args)
        return
    with pytest.raises(ConfigurationError) as info:
        CKKSParams(*args)
    assert fragment in str(info.value)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 5, 8, 12, 19])
def test_for_depth_picks_smallest_secure_ring(depth: int) -> None:
    p = CKKSParams.for_depth(depth)
    assert p.depth == depth and p.security_bits >= 128 and p.scale_bits == 40
    smaller = [n for n in MAX_LOG_Q[128] if n < p.poly_modulus_degree]
    assert all(p.total_bits > MAX_LOG_Q[128][n] for n in smaller)


def test_for_depth_too_deep_names_the_limit() -> None:
    with pytest.raises(ConfigurationError, match="deepest circuit"):
        CKKSParams.for_depth(25)
    assert CKKSParams.for_depth(7, precision_bits=30, integer_bits=9).depth == 7
    # 25 levels of 30 bits fit the 128-bit budget at N=32768, but SEAL's 30-bit primes = 1 mod
    # 65536 lie up to 1.75% below 2**30: TenSEAL's scale reset would drift results by 54%
    with pytest.raises(ConfigurationError, match=r"drift by up to 54\.3% over 25 level"):
        CKKSParams.for_depth(25, precision_bits=30, integer_bits=9)


def test_for_depth_matches_default_and_custom_integer_bits() -> None:
    assert CKKSParams.for_depth(2) == CKKSParams.default()
    p = CKKSParams.for_depth(1, precision_bits=30, integer_bits=10)
    assert p.coeff_mod_bit_sizes == (41, 30, 41) and p.max_abs_value == 2.0**10
    with pytest.raises(ConfigurationError, match="at most 60"):
        CKKSParams.for_depth(1, precision_bits=50, integer_bits=20)


def test_describe_is_canonical_and_hash_distinguishes() -> None:
    a, b = CKKSParams.default(), CKKSParams.for_depth(3)
    assert a.describe() == CKKSParams(8192, [60, 40, 40, 60], 40).describe()
    assert serialize.params_digest(a.describe()) != serialize.params_digest(b.describe())
    assert a.describe()["scheme"] == "ckks"
    assert hash(a) == hash(CKKSParams.default())


def test_security_levels() -> None:
    assert CKKSParams(8192, (50, 50), 40).security_bits == 256
    assert CKKSParams(8192, (50, 30, 50), 30).security_bits == 192


# -- BFV --------------------------------------------------------------------------------------


def test_bfv_default() -> None:
    p = BFVParams.default()
    assert p.plain_modulus == 1032193 and p.security_bits == 128
    assert p.slots == 4096 and p.depth >= 3 and p.max_abs_value == 516096


def test_bfv_rejects_non_batching_modulus_and_insecure() -> None:
    with pytest.raises(ConfigurationError, match="1 mod 2N"):
        BFVParams(8192, 17, (43, 43, 44, 44, 44))
    with pytest.raises(ConfigurationError, match="1 mod 2N"):
        BFVParams(8192, 16384 * 3 + 1 + 16384 * 2, (43, 43, 44, 44, 44))  # 1 mod 2N, not prime
    with pytest.raises(InsecureParametersError):
        BFVParams(4096, batching_prime(20, 4096), (43, 43, 44))
    assert BFVParams(4096, batching_prime(20, 4096), (43, 43, 44), allow_insecure=True)


@pytest.mark.parametrize("n", [4096, 8192, 16384])
def test_bfv_for_plain_bits(n: int) -> None:
    p = BFVParams.for_plain_bits(20, poly_modulus_degree=n)
    assert p.plain_modulus.bit_length() == 20 and p.plain_modulus % (2 * n) == 1
    assert p.security_bits >= 128 and p.depth >= 1


KNOWN_PRIMES = [2, 3, 65537, 1032193, 786433, 2**61 - 1, 18446744073709551557]
KNOWN_COMPOSITES = [1, 0, 4, 561, 1105, 3215031751, 2**32 + 1, 1032195, 3825123056546413051]


def test_is_prime_known_answers() -> None:
    assert all(is_prime(p) for p in KNOWN_PRIMES)
    assert not any(is_prime(c) for c in KNOWN_COMPOSITES)


@given(st.integers(min_value=2, max_value=50_000))
def test_is_prime_matches_trial_division(n: int) -> None:
    expected = all(n % d for d in range(2, int(n**0.5) + 1))
    assert is_prime(n) == expected
