"""CKKS contexts and tensors: every op against a numpy oracle, algebraic laws, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil.errors import ConfigurationError, DepthExhaustedError, KeyMismatchError, VeilError
from veil.he.lattice.ckks import CKKSContext, CKKSTensor, flooding_sigma, linear_combination
from veil.he.lattice.util import level_of
from veil.he.params import CKKSParams

TOL = 1e-5  # absolute, for values of magnitude <= ~100 at scale 2^40


@pytest.fixture(scope="module")
def ctx() -> CKKSContext:
    return CKKSContext.generate(galois_keys=True)  # the secure default: N=8192, 128-bit


@pytest.fixture(scope="module")
def other_ctx() -> CKKSContext:
    return CKKSContext.generate(galois_keys=False)


RNG = np.random.default_rng(1234)  # test data only
X = RNG.uniform(-3, 3, 37)
Y = RNG.uniform(-3, 3, 37)


def close(got: object, want: object, tol: float = TOL) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=tol, rtol=0)


def real_level(t: CKKSTensor) -> int:
    return min(level_of(c) for c in t._chunks)


# -- element-wise ops ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("add", lambda a, b: a + b),
        ("sub", lambda a, b: a - b),
        ("mul", lambda a, b: a * b),
        ("sub_reversed", lambda a, b: b - a),
    ],
)
def test_ct_ct_ops(ctx: CKKSContext, name: str, fn) -> None:
    a, b = ctx.encrypt(X), ctx.encrypt(Y)
    close(ctx.decrypt(fn(a, b)), fn(X, Y))


@pytest.mark.parametrize(
    "fn",
    [
        lambda a: a + 2.5, lambda a: 2.5 + a, lambda a: a - 1, lambda a: 1 - a,
        lambda a: a * 3, lambda a: -0.5 * a, lambda a: a * np.float32(2.0),
        lambda a: np.int64(4) * a, lambda a: a / 4, lambda a: -a, lambda a: a * 0,
        lambda a: a + Y, lambda a: Y + a, lambda a: a - Y, lambda a: Y - a, lambda a: a * Y,
        lambda a: Y * a,
    ],
)
def test_ct_plain_ops(ctx: CKKSContext, fn) -> None:
    close(ctx.decrypt(fn(ctx.encrypt(X))), fn(X))


def test_square_polyval_and_levels(ctx: CKKSContext) -> None:
    a = ctx.encrypt(X)
    sq = a.square()
    close(ctx.decrypt(sq), X**2)
    assert sq.levels_left == 1 == real_level(sq)
    p = a.polyval([0.5, -1.0, 0.25])  # degree 2: 2 levels
    close(ctx.decrypt(p), 0.5 - X + 0.25 * X**2)
    assert p.levels_left == 0 == real_level(p)
    lin = a.polyval([1.0, 2.0, 0.0, 0.0])  # trailing zeros dropped: degree 1, one level
    assert lin.levels_left == 1
    close(ctx.decrypt(lin), 1 + 2 * X)


def test_reductions_and_linear_algebra(ctx: CKKSContext) -> None:
    a, b = ctx.encrypt(X), ctx.encrypt(Y)
    close(ctx.decrypt(a.sum()), X.sum())
    assert a.sum().shape == () and ctx.decrypt(a.sum()).shape == ()
    close(ctx.decrypt(a.dot(b)), X @ Y, 1e-4)
    close(ctx.decrypt(a.dot(Y)), X @ Y, 1e-4)
    m = RNG.uniform(-1, 1, (37, 5))
    close(ctx.decrypt(a.matmul(m)), X @ m, 1e-4)
    close(ctx.decrypt(a @ m), X @ m, 1e-4)
    close(ctx.decrypt(m.T @ a), m.T @ X, 1e-4)
    close(ctx.decrypt(a.mv(m.T)), m.T @ X, 1e-4)
    close(ctx.decrypt(a @ b), X @ Y, 1e-4)


def test_sum_after_scalar_add_only_counts_real_elements(ctx: CKKSContext) -> None:
    close(ctx.decrypt((ctx.encrypt(X) + 1.0).sum()), (X + 1).sum())


def test_shapes_are_kept_and_reshape(ctx: CKKSContext) -> None:
    m = RNG.uniform(-1, 1, (3, 4, 2))
    t = ctx.encrypt(m)
    assert t.shape == (3, 4, 2) and t.size == 24 and len(t) == 3
    close(ctx.decrypt(t * 2), m * 2)
    close(ctx.decrypt(t.reshape(24)), m.ravel())
    close(ctx.decrypt(ctx.encrypt(5.0)), 5.0)
    assert ctx.decrypt(ctx.encrypt(5.0)).shape == ()
    with pytest.raises(ConfigurationError, match="cannot reshape"):
        t.reshape(5, 5)


def test_torch_in_torch_out(ctx: CKKSContext) -> None:
    torch = pytest.importorskip("torch")
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    out = ctx.decrypt(ctx.encrypt(x) * 2 + 1)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)
    assert torch.allclose(out, (x * 2 + 1).double(), atol=TOL)


def test_exact_cancellation_gives_zero_not_tenseal_error(ctx: CKKSContext) -> None:
    a = ctx.encrypt(X)
    close(ctx.decrypt(a - a), np.zeros_like(X))
    close(ctx.decrypt(a + (-a)), np.zeros_like(X))


# -- chunking across ciphertexts ----------------------------------------------------------------


def test_chunked_tensor_all_ops(ctx: CKKSContext) -> None:
    n = ctx.slots * 2 + 123
    x, y = RNG.uniform(-2, 2, n), RNG.uniform(-2, 2, n)
    a, b = ctx.encrypt(x), ctx.encrypt(y)
    assert a.n_ciphertexts == 3
    close(ctx.decrypt(a * b + y), x * y + y)
    close(ctx.decrypt(a.sum()), x.sum(), 1e-3)
    close(ctx.decrypt(a.dot(y)), x @ y, 1e-3)
    close(ctx.decrypt(a.dot(b)), x @ y, 1e-3)


@pytest.mark.slow
def test_chunked_matmul() -> None:
    """Tall matrices across chunks (TenSEAL's mm costs one rotation per row: slow)."""
    small = CKKSContext.generate(CKKSParams(4096, (39, 30, 40), 30), galois_keys=True)
    n = small.slots + 7
    x, m = RNG.uniform(-1, 1, n), RNG.uniform(-1, 1, (n, 3))
    close(small.decrypt(small.encrypt(x).matmul(m)), x @ m, 1e-2)


# -- batched layout helpers ---------------------------------------------------------------------


def test_linear_combination_matches_numpy(ctx: CKKSContext) -> None:
    feats = [RNG.uniform(-1, 1, 100) for _ in range(4)]
    cts = [ctx.encrypt(f) for f in feats]
    w = np.array([[0.5, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1, 2, 3, 4]])
    b = np.array([0.1, -0.2, 0.3])
    outs = linear_combination(cts, w, b)
    assert isinstance(outs, list) and len(outs) == 3
    want = w @ np.stack(feats) + b[:, None]
    for got, exp in zip(outs, want):
        close(ctx.decrypt(got), exp)
        assert got.levels_left == real_level(got)
    assert outs[0].levels_left == 1
    single = linear_combination(cts, w[0], 0.1)
    close(ctx.decrypt(single), want[0])
    with pytest.raises(ConfigurationError, match="do not match"):
        linear_combination(cts, np.ones(3))


def test_im2col_convolution_matches_numpy(ctx: CKKSContext) -> None:
    img, k = RNG.uniform(0, 1, (10, 10)), RNG.uniform(-1, 1, (3, 3))
    for stride in (1, 2):
        enc, windows = ctx.encrypt_im2col(img, 3, stride)
        side = (10 - 3) // stride + 1
        assert windows == side * side
        out = ctx.decrypt(enc.conv2d_im2col(k, windows))
        want = [(img[i * stride:i * stride + 3, j * stride:j * stride + 3] * k).sum()
                for i in range(side) for j in range(side)]
        close(out, want, 1e-4)


def test_block_sum_matches_numpy_and_checks_its_arguments(ctx: CKKSContext) -> None:
    slots = ctx.slots
    x = RNG.uniform(-1, 1, slots)
    for block in (1, 16, slots // 2):
        w = RNG.uniform(-2, 2, slots // block)
        t = ctx.encrypt(x)
        out = t.block_sum(w, block)
        assert out.shape == (block,) and out.levels_left == t.levels_left - 1
        close(ctx.decrypt(out), (x.reshape(-1, block) * w[:, None]).sum(axis=0), 1e-3)
    t = ctx.encrypt(x)
    for bad_block, n_w in ((12, slots // 12), (16, slots // 16 + 1), (0, 1)):
        with pytest.raises(ConfigurationError, match="block_sum"):
            t.block_sum(np.ones(n_w), bad_block)
    with pytest.raises(ConfigurationError, match="block_sum"):
        ctx.encrypt(x[:100]).block_sum(np.ones(100), 1)  # must fill the ciphertext
    with pytest.raises(ConfigurationError, match="finite"):
        t.block_sum(np.full(slots // 16, np.nan), 16)


# -- hypothesis: algebraic laws -----------------------------------------------------------------

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
vectors = st.integers(1, 60).flatmap(lambda n: st.tuples(arrays(np.float64, n, elements=finite),
                                                         arrays(np.float64, n, elements=finite)))


@settings(max_examples=15)
@given(vectors)
def test_homomorphic_add_mul(ctx: CKKSContext, ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    ea, eb = ctx.encrypt(a), ctx.encrypt(b)
    close(ctx.decrypt(ea + eb), a + b, 1e-5)
    # TenSEAL resets the scale to 2^40 after rescaling by a prime p != 2^40: relative error
    # |2^40/p - 1| (about 1e-7 here) on products
    np.testing.assert_allclose(ctx.decrypt(ea * eb), a * b, atol=1e-4, rtol=1e-6)


@settings(max_examples=10)
@given(vectors, finite)
def test_dot_is_linear(ctx: CKKSContext, ab: tuple[np.ndarray, np.ndarray], c: float) -> None:
    a, b = ab
    w = np.linspace(-1, 1, a.size)
    lhs = ctx.decrypt((ctx.encrypt(a) * c + ctx.encrypt(b)).dot(w))
    rhs = c * ctx.decrypt(ctx.encrypt(a).dot(w)) + ctx.decrypt(ctx.encrypt(b).dot(w))
    # relative part: TenSEAL's scale reset (params.rescale_relative_error per multiplication)
    np.testing.assert_allclose(lhs, rhs, atol=1e-2, rtol=4e-6)
    np.testing.assert_allclose(lhs, (c * a + b) @ w, atol=1e-2, rtol=4e-6)


@settings(max_examples=8)
@given(st.integers(1, 12), st.integers(1, 4), finite, st.integers(0, 2**32 - 1))
def test_matmul_is_linear(ctx: CKKSContext, n: int, m: int, c: float, seed: int) -> None:
    g = np.random.default_rng(seed)  # test data only
    a, b, w = g.uniform(-5, 5, n), g.uniform(-5, 5, n), g.uniform(-1, 1, (n, m))
    lhs = ctx.decrypt((ctx.encrypt(a) * c + ctx.encrypt(b)).matmul(w))
    rhs = c * ctx.decrypt(ctx.encrypt(a).matmul(w)) + ctx.decrypt(ctx.encrypt(b) @ w)
    np.testing.assert_allclose(lhs, rhs, atol=1e-2, rtol=4e-6)
    np.testing.assert_allclose(lhs, (c * a + b) @ w, atol=1e-2, rtol=4e-6)
    close(ctx.decrypt(w.T @ ctx.encrypt(a)), w.T @ a, 1e-4)


@settings(max_examples=5)
@given(st.integers(1, 3), st.integers(1, 300))
def test_chunking_roundtrip_any_length(ctx: CKKSContext, k: int, extra: int) -> None:
    n = ctx.slots * (k - 1) + extra
    x = np.linspace(-50, 50, n)
    t = ctx.encrypt(x)
    assert t.n_ciphertexts == k
    close(ctx.decrypt(t), x)


# -- depth bookkeeping --------------------------------------------------------------------------


def test_levels_match_tenseal_and_operands_are_not_mutated(ctx: CKKSContext) -> None:
    fresh, low = ctx.encrypt(X), ctx.encrypt(X) * ctx.encrypt(Y)
    assert (fresh.levels_left, low.levels_left) == (2, 1)
    for result in (low + fresh, fresh + low, low - fresh, fresh - low, low * fresh,
                   fresh * low, low.dot(fresh), fresh.dot(low)):
        assert result.levels_left == real_level(result)
    assert real_level(fresh) == 2  # TenSEAL would have mod-switched it in place
    close(ctx.decrypt(fresh - low), X - X * Y)
    close(ctx.decrypt(low - fresh), X * Y - X)
    zero = ctx.encrypt(X) * 0.0
    assert zero.levels_left == real_level(zero)


def test_depth_exhausted_is_raised_before_tenseal(ctx: CKKSContext) -> None:
    a = ctx.encrypt(X)
    deep = a * a * a  # uses both levels
    assert deep.levels_left == 0
    for op in (lambda: deep * a, lambda: deep * 2.0, lambda: deep * Y, lambda: deep.square(),
               lambda: deep.dot(Y), lambda: deep.polyval([1, 1]),
               lambda: a.polyval([0, 0, 0, 0, 1]),
               lambda: linear_combination([deep], [1.0])):
        with pytest.raises(DepthExhaustedError) as info:
            op()
        assert "for_depth(" in str(info.value)
        assert info.value.__cause__ is None  # not a translated TenSEAL error
    close(ctx.decrypt(deep + a), X**3 + X, 1e-4)  # additions still fine


def test_remaining_tenseal_errors_are_translated(ctx: CKKSContext) -> None:
    a = ctx.encrypt(X)
    a._level = 2
    deep = a * a * a
    deep._level = 5  # lie about the level: TenSEAL's own error must still be translated
    with pytest.raises(DepthExhaustedError) as info:
        deep * deep
    assert isinstance(info.value.__cause__, ValueError)


# -- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1.0, float("nan"), 2.0], "element 1 = nan"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), "element (1, 0) = inf"),
        ([1.0, -np.inf], "element 1 = -inf"),
        (np.array([1 + 0j, 2 + 1j]), "complex"),
        (np.array([1, "a"], dtype=object), "dtype object"),
        (["a", "b"], "dtype <U1"),
        ("abc", "str"),
        ([0.0, 2.0**19], "element 1 = 524288.0"),
        ([], "empty"),
        ([[1.0, 2.0], [3.0]], "regular shape"),
    ],
)
def test_bad_inputs_refused(ctx: CKKSContext, value: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ctx.encrypt(value)
    assert fragment in str(info.value)


def test_value_bound_is_checked_and_tightens_error_tracking(ctx: CKKSContext) -> None:
    with pytest.raises(ConfigurationError, match="value_bound"):
        ctx.encrypt([0.5, 2.0], value_bound=1.0)
    tight = ctx.encrypt(X / 3, value_bound=1.0)
    loose = ctx.encrypt(X / 3)
    assert (tight * tight).error_bound < (loose * loose).error_bound / 1000


def test_plain_operand_checks(ctx: CKKSContext) -> None:
    a = ctx.encrypt(X)
    with pytest.raises(ConfigurationError, match="no broadcasting"):
        a + np.ones(3)
    with pytest.raises(ConfigurationError, match="not finite"):
        a * float("nan")
    with pytest.raises(ConfigurationError, match="not finite"):
        a + np.full(X.size, np.nan)
    with pytest.raises(TypeError):
        a + "x"
    with pytest.raises(ConfigurationError, match="shapes"):
        a + ctx.encrypt(Y[:5])
    with pytest.raises(ConfigurationError, match="division"):
        a / 0
    with pytest.raises(ConfigurationError, match="too large to encode"):
        a * 1e30
    with pytest.raises(ConfigurationError, match="too large to encode"):
        a + np.full(X.size, 2.0**20)


def test_no_galois_keys_means_clear_error(other_ctx: CKKSContext) -> None:
    a = other_ctx.encrypt(X)
    close(other_ctx.decrypt(a * a + 1), X * X + 1)  # rotation-free ops work
    for op in (a.sum, lambda: a.dot(X), lambda: a.matmul(np.ones((37, 2)))):
        with pytest.raises(ConfigurationError, match="Galois keys"):
            op()


# -- keys ---------------------------------------------------------------------------------------


def test_public_context_cannot_decrypt_and_original_is_unchanged(ctx: CKKSContext) -> None:
    pub = ctx.public()
    assert ctx.has_secret_key and not pub.has_secret_key
    assert pub.key_id == ctx.key_id and pub.params == ctx.params and pub.slots == 4096
    t = pub.encrypt(X) * 2 + pub.encrypt(Y)
    with pytest.raises(ConfigurationError, match="public context"):
        pub.decrypt(t)
    close(ctx.decrypt(t), 2 * X + Y)  # same key pair: the secret context decrypts it


def test_tensors_from_another_key_are_refused(ctx: CKKSContext, other_ctx: CKKSContext) -> None:
    a, b = ctx.encrypt(X), other_ctx.encrypt(X)
    for op in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a.dot(b),
               lambda: other_ctx.decrypt(a), lambda: linear_combination([a, b], [1, 1])):
        with pytest.raises(KeyMismatchError):
            op()


# -- noise flooding -----------------------------------------------------------------------------


def test_flooding_sigma_formula() -> None:
    assert flooding_sigma(1e-6, 1, 40) == pytest.approx(2.0**20 * 1e-6)
    assert flooding_sigma(1e-6, 100, 40) == pytest.approx(2.0**20 * 10 * 1e-6)


def test_shared_decryption_adds_calibrated_noise(ctx: CKKSContext) -> None:
    zeros = ctx.encrypt(np.zeros(ctx.slots))
    plain = ctx.decrypt(zeros)
    bound = 1e-9
    shared = ctx.decrypt(zeros, shared=True, error_bound=bound)
    sigma = flooding_sigma(bound, ctx.slots, 40)
    noise = shared - plain
    assert abs(noise.std() / sigma - 1) < 0.1  # 4096 samples: std within 10%
    assert abs(noise.mean()) < 5 * sigma / np.sqrt(ctx.slots)
    assert not np.array_equal(shared, ctx.decrypt(zeros, shared=True, error_bound=bound))
    s = ctx.encrypt(X).sum()  # default bound: the tracked estimate
    assert abs(ctx.decrypt(s, shared=True) - X.sum()) < 10 * flooding_sigma(s.error_bound, 1)
    with pytest.raises(ConfigurationError, match="statistical_security"):
        ctx.decrypt(s, shared=True, statistical_security=8)
    with pytest.raises(ConfigurationError, match="error_bound"):
        ctx.decrypt(s, shared=True, error_bound=-1.0)


def test_error_bound_covers_observed_error(ctx: CKKSContext) -> None:
    a, b = ctx.encrypt(X, value_bound=3.0), ctx.encrypt(Y, value_bound=3.0)
    for t, exact in ((a, X), (a + b, X + Y), (a * b, X * Y), ((a * 0.5).sum(), 0.5 * X.sum()),
                     (a.polyval([1, 0.5, 0.1]), 1 + 0.5 * X + 0.1 * X**2)):
        # plus the deterministic scale-reset error of each multiplication (key-independent)
        det = (2 - t.levels_left) * 3 * np.max(np.abs(exact)) * ctx.params.rescale_relative_error
        assert np.max(np.abs(ctx.decrypt(t) - exact)) < t.error_bound + det


def test_generate_refuses_non_params_and_translates_seal(ctx: CKKSContext) -> None:
    with pytest.raises(ConfigurationError):
        CKKSContext.generate("8192")  # type: ignore[arg-type]
    weak = CKKSParams(4096, (60, 40, 40, 60), 40, allow_insecure=True)
    with pytest.raises(ConfigurationError, match="SEAL") as info:
        CKKSContext.generate(weak, galois_keys=False)
    assert isinstance(info.value, VeilError)
