"""CKKS serialization: envelopes, public vs secret contexts, tensors, parameter/key binding."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError
from veil.he import serialize as env
from veil.he.lattice.ckks import KIND_PUBLIC, KIND_SECRET, KIND_TENSOR, CKKSContext
from veil.he.params import CKKSParams

SMALL = CKKSParams(4096, (39, 30, 40), 30)  # fast; |x| < 2^8


@pytest.fixture(scope="module")
def ctx() -> CKKSContext:
    return CKKSContext.generate(SMALL, galois_keys=False)


def test_public_serialization_has_no_secret_key_bytes(ctx: CKKSContext, tmp_path) -> None:
    path = tmp_path / "sk.bin"
    ctx._native.secret_key().save(str(path))
    sk = path.read_bytes()
    probes = [sk[i : i + 64] for i in range(100, len(sk) - 64, max(1, len(sk) // 8))]
    secret_bytes = ctx.serialize(include_secret_key=True, expose_secret=True)
    assert all(p in secret_bytes for p in probes)  # the probe can find the key when present
    public_bytes = ctx.serialize()
    assert not any(p in public_bytes for p in probes)
    assert not any(p in ctx.public().serialize() for p in probes)
    assert env.unpack(public_bytes, kind=KIND_PUBLIC).kind == KIND_PUBLIC
    assert env.unpack(secret_bytes, kind=KIND_SECRET).kind == KIND_SECRET


def test_secret_context_roundtrip_requires_the_flag(ctx: CKKSContext) -> None:
    x = np.linspace(-1, 1, 50)
    loaded = CKKSContext.load(ctx.serialize(include_secret_key=True, expose_secret=True))
    assert loaded.has_secret_key and loaded.key_id == ctx.key_id and loaded.params == SMALL
    np.testing.assert_allclose(loaded.decrypt(ctx.encrypt(x)), x, atol=1e-3)
    pub = CKKSContext.load(ctx.serialize())
    assert not pub.has_secret_key and not pub.has_galois_keys
    with pytest.raises(ConfigurationError, match="public context"):
        pub.decrypt(pub.encrypt(x))
    with pytest.raises(ConfigurationError, match="no secret key"):
        pub.serialize(include_secret_key=True, expose_secret=True)
    with pytest.raises(TypeError):
        ctx.serialize(True)  # type: ignore[misc]


def test_tensor_roundtrip_between_public_and_secret(ctx: CKKSContext) -> None:
    x = np.arange(12.0).reshape(3, 4) / 10
    server = CKKSContext.load(ctx.serialize())
    t = server.load_tensor(ctx.encrypt(x).serialize())
    result = (t * 2 + 1).serialize()
    back = ctx.load_tensor(result)
    assert back.shape == (3, 4) and back.levels_left == 0
    np.testing.assert_allclose(ctx.decrypt(back), x * 2 + 1, atol=1e-3)
    assert env.unpack(result, kind=KIND_TENSOR).params_hash == ctx.params_hash


def test_load_tensor_checks_params_and_key(ctx: CKKSContext) -> None:
    data = ctx.encrypt([1.0, 2.0]).serialize()
    other_params = CKKSContext.generate(CKKSParams(4096, (38, 30, 40), 30), galois_keys=False)
    with pytest.raises(SerializationError, match="other parameters"):
        other_params.load_tensor(data)
    same_params_other_key = CKKSContext.generate(SMALL, galois_keys=False)
    with pytest.raises(KeyMismatchError):
        same_params_other_key.load_tensor(data)
    with pytest.raises(SerializationError, match="exceeds the limit"):
        ctx.load_tensor(data, max_bytes=1000)
    with pytest.raises(SerializationError, match="wrong payload kind"):
        ctx.load_tensor(ctx.serialize())
    with pytest.raises(SerializationError, match="wrong payload kind"):
        CKKSContext.load(data)


def test_context_load_with_expected_params(ctx: CKKSContext) -> None:
    data = ctx.serialize()
    assert CKKSContext.load(data, params=SMALL).params == SMALL
    with pytest.raises(SerializationError, match="other parameters"):
        CKKSContext.load(data, params=CKKSParams.default())


def test_kind_mismatch_between_envelope_and_content(ctx: CKKSContext) -> None:
    e = env.unpack(ctx.serialize(include_secret_key=True, expose_secret=True), kind=KIND_SECRET)
    relabelled = env.pack(KIND_PUBLIC, e.body, params_hash=e.params_hash)
    with pytest.raises(SerializationError, match="does not match"):
        CKKSContext.load(relabelled)  # a 'public' payload that carries a secret key
