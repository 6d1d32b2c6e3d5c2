"""matmul relies on TenSEAL's replicated slot layout; plaintext vector operands break it."""

from __future__ import annotations

import numpy as np
import pytest

from veil import he
from veil.errors import UnsupportedOperationError


@pytest.fixture(scope="module")
def ctx() -> he.CKKSContext:
    return he.CKKSContext.generate(he.CKKSParams.for_depth(3), galois_keys=True)


X = np.linspace(-1.0, 1.0, 8)
P = np.arange(8.0) / 10
W = np.sin(np.arange(24.0)).reshape(8, 3)


@pytest.mark.parametrize(
    ("name", "build", "want"),
    [
        ("fresh", lambda c, e: e, X),
        ("plus scalar", lambda c, e: e + 0.5, X + 0.5),
        ("times scalar", lambda c, e: e * 2.0, X * 2.0),
        ("plus ciphertext", lambda c, e: e + c.encrypt(P), X + P),
    ],
)
def test_matmul_is_right_whenever_it_is_allowed(ctx, name, build, want) -> None:
    got = ctx.decrypt(build(ctx, ctx.encrypt(X)).matmul(W))
    np.testing.assert_allclose(got, want @ W, atol=1e-4)


@pytest.mark.parametrize(
    "build",
    [
        lambda c, e: e + P,
        lambda c, e: e - P,
        lambda c, e: P - e,
        lambda c, e: e * P,
        lambda c, e: (e + P) * 2.0,              # propagates through later ops
        lambda c, e: c.encrypt(P) + (e * P),     # and through ciphertext-ciphertext ops
        lambda c, e: c.load_tensor((e + P).serialize()),   # and through serialization
    ],
)
def test_matmul_refuses_tensors_whose_layout_a_plain_vector_broke(ctx, build) -> None:
    t = build(ctx, ctx.encrypt(X))
    with pytest.raises(UnsupportedOperationError, match="matmul first"):
        t.matmul(W)
    with pytest.raises(UnsupportedOperationError):
        t.mv(W.T)
    # the element-wise result, sum and dot stay correct on such tensors
    plain = ctx.decrypt(t)
    np.testing.assert_allclose(ctx.decrypt(t.sum()), plain.sum(), atol=1e-3)
    np.testing.assert_allclose(ctx.decrypt(t.dot(W[:, 0])), plain @ W[:, 0], atol=1e-3)
