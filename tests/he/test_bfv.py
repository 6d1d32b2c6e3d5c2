"""BFV contexts and tensors: exact integer arithmetic against numpy, depth, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil.errors import ConfigurationError, DepthExhaustedError, KeyMismatchError
from veil.he.lattice.bfv import BFVContext
from veil.he.params import BFVParams

P = BFVParams.for_plain_bits(20, poly_modulus_degree=4096)  # depth 1, 2048 slots
T = P.plain_modulus
X = np.arange(-20, 20)
Y = (np.arange(40) * 7) % 23 - 11


@pytest.fixture(scope="module")
def ctx() -> BFVContext:
    return BFVContext.generate(P)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: b - a, lambda a, b: a * b,
        lambda a, b: a + 5, lambda a, b: 5 - a, lambda a, b: a * -3, lambda a, b: 0 * a,
        lambda a, b: a * Y, lambda a, b: Y + a, lambda a, b: a - Y, lambda a, b: -a,
        lambda a, b: a - a, lambda a, b: a * a,
    ],
)
def test_ops_match_numpy(ctx: BFVContext, fn) -> None:
    got = ctx.decrypt(fn(ctx.encrypt(X), ctx.encrypt(Y)))
    want = fn(X, Y)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


def test_reductions(ctx: BFVContext) -> None:
    a, b = ctx.encrypt(X), ctx.encrypt(Y)
    assert ctx.decrypt(a.sum()) == X.sum() and a.sum().shape == ()
    assert ctx.decrypt(a.dot(b)) == X @ Y
    assert ctx.decrypt(a.dot(Y)) == X @ Y


def test_chunked_and_shaped(ctx: BFVContext) -> None:
    x = (np.arange(5000) % 97).reshape(50, 100)
    t = ctx.encrypt(x)
    assert t.shape == (50, 100) and len(t._chunks) == 3
    np.testing.assert_array_equal(ctx.decrypt(t * 2 + x), 3 * x)
    assert ctx.decrypt(t.sum()) == x.sum()


def test_results_wrap_mod_t(ctx: BFVContext) -> None:
    half = (T - 1) // 2
    got = ctx.decrypt(ctx.encrypt([half]) + 1)
    assert got[0] == -half  # centred representative of half + 1 mod t


@settings(max_examples=10)
@given(st.integers(1, 40).flatmap(
    lambda n: st.tuples(arrays(np.int64, n, elements=st.integers(-500, 500)),
                        arrays(np.int64, n, elements=st.integers(-500, 500)))))
def test_add_mul_homomorphic(ctx: BFVContext, ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    ea, eb = ctx.encrypt(a), ctx.encrypt(b)
    np.testing.assert_array_equal(ctx.decrypt(ea + eb), a + b)
    np.testing.assert_array_equal(ctx.decrypt(ea * eb), a * b)


def test_depth_is_enforced_and_noise_checked(ctx: BFVContext) -> None:
    a = ctx.encrypt(X)
    sq = a * a
    assert sq.multiplications == 1 == P.depth
    with pytest.raises(DepthExhaustedError, match="beyond"):
        sq * a
    sq._muls = 0  # bypass the count: decryption still refuses the garbage
    deep = sq * sq
    with pytest.raises(DepthExhaustedError, match="noise budget"):
        ctx.decrypt(deep)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2, 2**40], "outside the plaintext range"),
        ([1.5, 2.0], "not an integer"),
        ([1.0, float("nan")], "not an integer"),
        (np.array([1 + 1j]), "complex"),
        (["a"], "dtype"),
        ([], "empty"),
    ],
)
def test_bad_inputs(ctx: BFVContext, value: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        ctx.encrypt(value)


def test_keys_and_serialization(ctx: BFVContext) -> None:
    other = BFVContext.generate(P, galois_keys=False)
    with pytest.raises(KeyMismatchError):
        ctx.encrypt(X) + other.encrypt(X)
    with pytest.raises(KeyMismatchError):
        other.decrypt(ctx.encrypt(X))
    with pytest.raises(ConfigurationError, match="Galois"):
        other.encrypt(X).sum()
    pub = BFVContext.load(ctx.serialize())
    assert not pub.has_secret_key
    with pytest.raises(ConfigurationError, match="public context"):
        pub.decrypt(pub.encrypt(X))
    data = (pub.load_tensor(ctx.encrypt(X).serialize()) * 3).serialize()
    np.testing.assert_array_equal(ctx.decrypt(ctx.load_tensor(data)), 3 * X)
    with pytest.raises(KeyMismatchError):
        other.load_tensor(data)
    sec = BFVContext.load(ctx.serialize(include_secret_key=True, expose_secret=True))
    np.testing.assert_array_equal(sec.decrypt(ctx.encrypt(X)), X)


def test_secure_default_context() -> None:
    c = BFVContext.generate(galois_keys=False)
    assert c.params == BFVParams.default() and c.params.security_bits == 128
    np.testing.assert_array_equal(c.decrypt(c.encrypt([3, -4]) * c.encrypt([5, 6])), [15, -24])


def test_plain_operands_must_be_integers(ctx: BFVContext) -> None:
    a = ctx.encrypt(X)
    np.testing.assert_array_equal(ctx.decrypt(a * 2.0), 2 * X)
    with pytest.raises(ConfigurationError, match="not an integer"):
        a * 2.5
    with pytest.raises(ConfigurationError, match="not an integer"):
        a + np.full(X.size, 0.5)
