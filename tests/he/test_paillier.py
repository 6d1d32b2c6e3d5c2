"""PaillierVector against plaintext numpy oracles, plus key handling and overflow tracking."""

from __future__ import annotations

import numpy as np
import phe
import pytest
from gmpy2 import mpz
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import (
    ConfigurationError,
    InsecureParametersError,
    KeyMismatchError,
    SerializationError,
    UnsupportedOperationError,
)
from veil.he.paillier import (
    PaillierKeyPair,
    PaillierPrivateKey,
    PaillierPublicKey,
    PaillierVector,
    wire,
)
from veil.he.serialize import pack

INTS = st.integers(min_value=-(2**62), max_value=2**62)
FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@pytest.fixture(scope="module")
def kp() -> PaillierKeyPair:
    return PaillierKeyPair.generate(1024, allow_insecure=True)


@pytest.fixture(scope="module")
def other() -> PaillierKeyPair:
    return PaillierKeyPair.generate(1024, allow_insecure=True)


def test_roundtrip_shapes_and_dtypes(kp: PaillierKeyPair) -> None:
    x = np.arange(-6, 6).reshape(3, 2, 2)
    v = kp.public_key.encrypt(x)
    assert v.shape == (3, 2, 2) and len(v) == 3 and v.size == 12
    out = kp.decrypt(v)
    assert out.dtype == np.int64 and np.array_equal(out, x)
    f = np.linspace(-3.3, 7.7, 10)
    np.testing.assert_allclose(kp.decrypt(kp.public_key.encrypt(f)), f, atol=2**-32)
    big = [2**80, -(2**90)]
    assert kp.decrypt(kp.public_key.encrypt(big, max_abs=2.0**95)).tolist() == big
    assert kp.decrypt(kp.public_key.encrypt(5)).shape == ()


@given(st.lists(st.tuples(INTS, INTS), min_size=1, max_size=6))
def test_add_and_sub_of_ints_are_exact(kp: PaillierKeyPair, pairs: list) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    va, vb = kp.public_key.encrypt(a), kp.public_key.encrypt(b)
    assert kp.decrypt(va + vb).tolist() == [int(x) + int(y) for x, y in zip(a, b)]
    assert kp.decrypt(va - vb).tolist() == [int(x) - int(y) for x, y in zip(a, b)]
    assert kp.decrypt(-va).tolist() == [-int(x) for x in a]


@given(st.lists(st.tuples(FLOATS, FLOATS), min_size=1, max_size=6), st.integers(8, 48))
def test_add_of_floats_within_precision(kp: PaillierKeyPair, pairs: list, prec: int) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    pk = kp.public_key
    va, vb = pk.encrypt(a, precision_bits=prec), pk.encrypt(b, precision_bits=prec)
    # each encoding rounds by at most 2^-(prec+1); float64 results add about one ulp
    tol = 2.0**-prec + 2 * np.spacing(np.abs(a) + np.abs(b))
    assert np.all(np.abs(kp.decrypt(va + vb) - (a + b)) <= tol)
    assert np.all(np.abs(kp.decrypt(va + b) - (a + b)) <= tol)


@given(st.lists(INTS, min_size=1, max_size=5), st.integers(-(2**40), 2**40))
def test_scalar_multiply_of_ints_is_exact(kp: PaillierKeyPair, xs: list, k: int) -> None:
    v = kp.public_key.encrypt(xs)
    assert kp.decrypt(v * k).tolist() == [x * k for x in xs]
    assert kp.decrypt(k * v).tolist() == [x * k for x in xs]


@given(st.lists(FLOATS, min_size=1, max_size=5), st.floats(-100, 100))
def test_float_multiply_within_bound(kp: PaillierKeyPair, xs: list, k: float) -> None:
    v = kp.public_key.encrypt(xs, precision_bits=30)
    got = kp.decrypt(v * k)
    # |x·k − x̃·k̃| <= |k|·2^-31 + |x̃|·2^-31
    tol = (abs(k) + max(abs(x) for x in xs) + 1) * 2.0**-30
    np.testing.assert_allclose(got, np.array(xs) * k, rtol=0, atol=tol)


def test_sum_dot_and_broadcasting_match_numpy(kp: PaillierKeyPair) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, size=(4, 3))
    v = kp.public_key.encrypt(x)
    assert kp.decrypt(v.sum()) == x.sum()
    assert np.array_equal(kp.decrypt(v.sum(axis=0)), x.sum(axis=0))
    assert np.array_equal(kp.decrypt(v.sum(axis=-1)), x.sum(axis=1))
    w = rng.integers(-50, 50, size=3)
    assert np.array_equal(kp.decrypt(v * w), x * w)
    assert np.array_equal(kp.decrypt(v + w), x + w)
    assert np.array_equal(kp.decrypt(w - v), w - x)
    row = v[1]
    assert kp.decrypt(row.dot(w)) == x[1] @ w
    m = rng.integers(-5, 5, size=(3, 2))
    assert np.array_equal(kp.decrypt(row @ m), x[1] @ m)
    f = rng.normal(size=3)
    np.testing.assert_allclose(kp.decrypt(row.dot(f)), x[1] @ f, atol=1e-6)
    assert np.array_equal(kp.decrypt(v.reshape(12)), x.reshape(12))
    with pytest.raises(ConfigurationError, match="broadcast"):
        v + np.ones(5)


def test_scale_alignment_between_vectors(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    a = pk.encrypt([1.5, 2.5], precision_bits=8)
    b = pk.encrypt([0.25, 1.0], precision_bits=20) * 0.5
    assert b.scale == 40
    np.testing.assert_allclose(kp.decrypt(a + b), [1.625, 3.0], atol=1e-6)


def test_int_vector_with_fractional_plaintexts(kp: PaillierKeyPair) -> None:
    v = kp.public_key.encrypt([3, -4])
    np.testing.assert_allclose(kp.decrypt(v * 0.5), [1.5, -2.0])
    np.testing.assert_allclose(kp.decrypt(v + 0.25), [3.25, -3.75])
    assert kp.decrypt(v * 2.0).dtype == np.int64


def test_different_keys_are_refused(kp: PaillierKeyPair, other: PaillierKeyPair) -> None:
    a = kp.public_key.encrypt([1, 2])
    b = other.public_key.encrypt([1, 2])
    with pytest.raises(KeyMismatchError, match="different Paillier keys"):
        a + b
    with pytest.raises(KeyMismatchError, match="different Paillier keys"):
        a - b
    with pytest.raises(KeyMismatchError, match="matching key"):
        other.decrypt(a)
    with pytest.raises(SerializationError, match="other parameters"):
        PaillierVector.load(a.serialize(), other.public_key)
    with pytest.raises(KeyMismatchError):
        PaillierKeyPair(kp.public_key, other.private_key)


def test_ciphertext_products_are_unsupported(kp: PaillierKeyPair) -> None:
    v = kp.public_key.encrypt([1, 2])
    with pytest.raises(UnsupportedOperationError, match="additively homomorphic"):
        v * v


def test_inputs_outside_range_are_refused(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    with pytest.raises(ConfigurationError, match=r"outside the declared range .*max_abs=10.0"):
        pk.encrypt([1.0, 11.0], max_abs=10)
    with pytest.raises(ConfigurationError, match="non-finite value nan at flat index 1"):
        pk.encrypt([1.0, float("nan")])
    with pytest.raises(ConfigurationError, match="more than this 1024-bit key holds"):
        pk.encrypt([1.0], max_abs=2.0**900, precision_bits=200)
    with pytest.raises(ConfigurationError, match="cannot be encoded"):
        pk.encrypt(["a"])
    with pytest.raises(ConfigurationError, match="workers"):
        pk.encrypt([1], workers=0)


def test_overflow_is_detected_before_it_happens(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    v = pk.encrypt([1.0, -1.0], max_abs=2.0**400, precision_bits=100)  # bound 2^500 of ~2^1023
    with pytest.raises(ConfigurationError, match="could overflow"):
        v * 2**600
    doubled = v
    with pytest.raises(ConfigurationError, match="could overflow"):
        for _ in range(600):
            doubled = doubled + doubled
    # everything that was allowed still decrypts exactly
    assert doubled.bound <= pk.max_plaintext
    steps = doubled.bound.bit_length() - v.bound.bit_length()
    np.testing.assert_allclose(kp.decrypt(doubled), [2.0**steps, -(2.0**steps)])
    with pytest.raises(ConfigurationError, match="could overflow"):
        pk.encrypt(np.ones(8), max_abs=2.0**1021, precision_bits=0).sum()


def test_serialize_roundtrip_and_rerandomize(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    v = pk.encrypt(np.array([[1.25, -2.5], [3.0, 4.0]]), precision_bits=16)
    w = PaillierVector.load(v.serialize(), pk)
    assert w.shape == (2, 2) and w.scale == 16 and w.bound == v.bound
    np.testing.assert_array_equal(kp.decrypt(w), kp.decrypt(v))
    r = v.rerandomize()
    assert not set(map(int, r._c.ravel())) & set(map(int, v._c.ravel()))
    np.testing.assert_array_equal(kp.decrypt(r), kp.decrypt(v))
    s = v + v
    loaded = PaillierVector.load(s.serialize(), pk)  # results are re-randomized by default
    assert not set(map(int, loaded._c.ravel())) & set(map(int, s._c.ravel()))
    same = PaillierVector.load(s.serialize(rerandomize=False), pk)
    assert [int(c) for c in same._c.ravel()] == [int(c) for c in s._c.ravel()]


def _vector_payload(pk: PaillierPublicKey, cts: list[int]) -> bytes:
    w = wire.Writer()
    w.u8(1), w.u8(1), w.u16(0), w.u16(0), w.f64(100.0), w.bigint(100), w.shape((len(cts),))
    w.ciphertexts([mpz(c) for c in cts], pk._width)
    return pack(wire.KIND_VECTOR, w.bytes(), params_hash=pk._hash)


def test_load_refuses_out_of_range_and_non_units(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    good = int(pk.encrypt([7])._c.ravel()[0])
    assert kp.decrypt(PaillierVector.load(_vector_payload(pk, [good]), pk)).tolist() == [7]
    p = int(kp.private_key._crt.p)
    for bad, match in [(0, "outside 0 < c"), (pk.n**2, "outside 0 < c"), (p * 12345, "factor")]:
        with pytest.raises(SerializationError, match=match):
            PaillierVector.load(_vector_payload(pk, [good, bad]), pk)


def test_key_serialization(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    assert PaillierPublicKey.load(pk.serialize(), allow_insecure=True) == pk
    with pytest.raises(InsecureParametersError):
        PaillierPublicKey.load(pk.serialize())
    with pytest.raises(ConfigurationError, match="expose_secret=True"):
        kp.private_key.serialize()
    sk = PaillierPrivateKey.load(kp.private_key.serialize(expose_secret=True), allow_insecure=True)
    v = pk.encrypt([1, -2])
    assert sk.decrypt(v).tolist() == [1, -2]
    assert "p=" not in repr(sk) and str(kp.private_key._crt.p) not in repr(sk)


def test_public_key_load_validates_the_modulus(kp: PaillierKeyPair) -> None:
    p, q = int(kp.private_key._crt.p), int(kp.private_key._crt.q)
    for n, match in [(p * q * 2, "even"), (p * p, "square"), (p * q * 7, "factor"), (p, "prime")]:
        w = wire.Writer()
        w.u8(1), w.bigint(n)
        payload = pack(wire.KIND_PUBLIC, w.bytes(), params_hash=wire.key_hash(n))
        with pytest.raises(SerializationError, match=match):
            PaillierPublicKey.load(payload, allow_insecure=True)


def test_crt_and_public_encryptions_decrypt_with_phe(kp: PaillierKeyPair) -> None:
    _, phe_sk = kp.to_phe()
    x = np.array([0.5, -1.75, 1e5])
    for v in (kp.encrypt(x), kp.public_key.encrypt(x), kp.public_key.encrypt(np.tile(x, 20))):
        got = [phe_sk.decrypt(e) for e in v.to_phe()]
        np.testing.assert_allclose(got, np.resize(x, len(got)))
    assert isinstance(kp.to_phe()[0], phe.PaillierPublicKey)


def test_parallel_batch_encryption(kp: PaillierKeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.he.paillier import parallel as _paillier_parallel

    monkeypatch.setattr(_paillier_parallel, "PARALLEL_MIN", 64)  # keep the test small
    calls = []
    real = _paillier_parallel.encrypt_residues_parallel

    def spy(*args: object) -> object:
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(_paillier_parallel, "encrypt_residues_parallel", spy)
    x = np.arange(-150, 150)
    for enc in (kp.public_key.encrypt, kp.encrypt):
        v = enc(x, workers=2)
        assert np.array_equal(kp.decrypt(v), x)
        assert len(set(map(int, v._c.ravel()))) == x.size  # fresh randomness everywhere
    assert calls == [2, 2]
    kp.public_key.encrypt(x[:10], workers=2)  # below the threshold: serial
    assert calls == [2, 2]


def test_2048_bit_keys_need_no_opt_in() -> None:
    kp = PaillierKeyPair.generate(2048)
    assert kp.public_key.bits == 2048
    assert kp.decrypt(kp.public_key.encrypt([3.5, -1.0])).tolist() == [3.5, -1.0]


@pytest.mark.slow
def test_default_is_3072_bits() -> None:
    kp = PaillierKeyPair.generate()
    assert kp.public_key.bits == 3072
    pk = PaillierPublicKey.load(kp.public_key.serialize())
    x = np.array([1.5, -2.0, 3.25])
    v = pk.encrypt(x) + pk.encrypt(x)
    np.testing.assert_array_equal(kp.decrypt(v), 2 * x)
    _, phe_sk = kp.to_phe()
    assert phe_sk.decrypt(pk.encrypt([7]).to_phe()[0]) == 7


def test_division_and_empty_vectors(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    v = pk.encrypt([1.0, 2.0, 3.0])
    assert abs(kp.decrypt(v.sum() / 3) - 2.0) < 1e-12
    np.testing.assert_allclose(kp.decrypt(pk.encrypt([10, 20]) / [4, 3]), [2.5, 20 / 3])
    with pytest.raises(ConfigurationError, match="non-zero"):
        v / 0
    e = pk.encrypt([])
    assert kp.decrypt(PaillierVector.load(e.serialize(), pk)).shape == (0,)
    assert kp.decrypt(pk.encrypt(np.zeros((0, 3))).sum(axis=0)).tolist() == [0.0, 0.0, 0.0]


def test_secure_default_parameters() -> None:
    import inspect

    assert inspect.signature(PaillierKeyPair.generate).parameters["bits"].default == 3072
    with pytest.raises(InsecureParametersError, match="bits=3072"):
        PaillierKeyPair.generate(1536)


def test_explicit_encoding_object(kp: PaillierKeyPair) -> None:
    from veil.he.encoding import FixedPointEncoding

    enc = FixedPointEncoding(10, 5.0)
    v = kp.encrypt([1.0, -4.5], encoding=enc)
    assert v.encoding == enc and v.scale == 10 and v.bound == 5 * 2**10
    np.testing.assert_array_equal(kp.decrypt(v), [1.0, -4.5])
    with pytest.raises(ConfigurationError, match="not both"):
        kp.public_key.encrypt([1.0], encoding=enc, precision_bits=3)
    with pytest.raises(ConfigurationError, match="outside the declared range"):
        kp.public_key.encrypt([6.0], encoding=enc)


def test_encryption_is_randomized_on_every_path(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    x = np.zeros(60)  # 60 > the table threshold: covers plain powmod, table and CRT paths
    seen = set()
    packed = pk.encrypt_packed(x, precision_bits=8, max_addends=2)
    for v in (pk.encrypt(x[:3]), pk.encrypt(x), kp.encrypt(x), packed):
        cs = [int(c) for c in (v._c.ravel() if isinstance(v, PaillierVector) else v._c)]
        assert len(set(cs)) == len(cs) and not seen & set(cs)
        assert all(c != 1 for c in cs)
        seen |= set(cs)


def test_parallel_decryption(kp: PaillierKeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.he.paillier import parallel as _paillier_parallel

    monkeypatch.setattr(_paillier_parallel, "PARALLEL_MIN_DECRYPT", 16)
    calls = []
    real = _paillier_parallel.ProcessPoolExecutor

    def counting_pool(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("max_workers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_paillier_parallel, "ProcessPoolExecutor", counting_pool)
    x = np.arange(-20, 20).reshape(5, 8)
    v = kp.public_key.encrypt(x)
    assert np.array_equal(kp.decrypt(v, workers=2), x)
    packed = kp.public_key.encrypt_packed(np.arange(800), precision_bits=0, max_addends=2,
                                          max_abs=1000)
    assert np.array_equal(kp.private_key.decrypt(packed + packed, workers=3), 2 * np.arange(800))
    assert calls == [2]  # the packed sum is 10 ciphertexts, below the threshold: serial
    with pytest.raises(ConfigurationError, match="workers"):
        kp.decrypt(v, workers=-1)
