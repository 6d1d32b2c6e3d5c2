"""FixedPointEncoding: exact integers, bounded rounding for floats, range checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError
from veil.he.encoding import FixedPointEncoding

N = 2**127 - 1  # any odd modulus works for the residue maps


@given(st.lists(st.integers(-(2**70), 2**70), max_size=20))
def test_integers_roundtrip_exactly(xs: list) -> None:
    enc = FixedPointEncoding(0, 2.0**70)
    ints = enc.encode(np.array(xs, dtype=object) if xs else np.zeros(0, dtype=np.int64))
    assert ints == xs
    back = FixedPointEncoding.from_residues(enc.to_residues(ints, N), N)
    assert back == xs


@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=20), st.integers(0, 60))
def test_float_error_is_at_most_half_an_ulp_of_the_scale(xs: list, prec: int) -> None:
    enc = FixedPointEncoding(prec, 1e9)
    got = enc.decode(enc.encode(xs))
    x = np.array(xs)
    # encoding rounds by <= 2^-(prec+1); decoding to float64 adds at most one ulp of x
    assert np.all(np.abs(got - x) <= 2.0 ** -(prec + 1) + np.spacing(np.abs(x)))


def test_known_encodings() -> None:
    enc = FixedPointEncoding(4, 100)
    assert enc.encode([1.5, -0.25, 0.03125, 0.09375]) == [24, -4, 0, 2]  # half to even
    assert enc.bound == 1600
    assert FixedPointEncoding(3, 0.1).bound == 1  # ⌈0.8⌉
    assert enc.decode([24, -4], (2, 1)).tolist() == [[1.5], [-0.25]]
    assert FixedPointEncoding(0, 10).decode([3, -4]).dtype == np.int64
    big = FixedPointEncoding(0, 2.0**100).decode([2**90])
    assert big.dtype == object and big[0] == 2**90
    assert FixedPointEncoding(300, 1).encode([1.0]) == [2**300]  # beyond float range: exact


def test_residue_maps_are_signed() -> None:
    enc = FixedPointEncoding(0, 10)
    assert enc.to_residues([-1, 0, 5], 11) == [10, 0, 5]
    assert FixedPointEncoding.from_residues([10, 0, 5, 6], 11) == [-1, 0, 5, -5]
    with pytest.raises(ConfigurationError, match="modulus holds signed values"):
        enc.to_residues([6], 11)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision_bits": -1}, "outside 0..1024"),
        ({"precision_bits": 2000}, "outside 0..1024"),
        ({"precision_bits": 1.5}, "must be an int"),
        ({"precision_bits": True}, "must be an int"),
        ({"precision_bits": 8, "max_abs": 0}, "finite positive"),
        ({"precision_bits": 8, "max_abs": float("inf")}, "finite positive"),
        ({"precision_bits": 8, "max_abs": "x"}, "positive number"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FixedPointEncoding(**kwargs)


def test_out_of_range_values_are_refused_with_the_value() -> None:
    enc = FixedPointEncoding(8, 10)
    with pytest.raises(ConfigurationError, match="value -10.5 at flat index 2"):
        enc.encode([1.0, 2.0, -10.5])
    with pytest.raises(ConfigurationError, match="value 11 at flat index 0"):
        enc.encode([11, 3])
    with pytest.raises(ConfigurationError, match="non-finite value inf"):
        enc.encode([np.inf])
    with pytest.raises(ConfigurationError, match="rectangular"):
        enc.encode([[1.0], [1.0, 2.0]])
    with pytest.raises(ConfigurationError, match="cannot be encoded"):
        enc.encode([1 + 2j])
