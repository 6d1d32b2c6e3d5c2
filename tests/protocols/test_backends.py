"""One test body over the three aggregation backends (masking, Paillier, CKKS)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import AggregationAborted, ConfigurationError, InsecureParametersError
from veil.fl.aggregation import BACKENDS, make_aggregator, secure_sum

N, D, CLIP = 5, 40, 2.0
FAST = {
    "masking": {},
    "paillier": {"key_bits": 1024, "allow_insecure": True},  # 1024-bit: test speed only
    "ckks": {},
}


@pytest.fixture(scope="module")
def updates() -> dict[int, np.ndarray]:
    gen = np.random.default_rng(11)
    return {c: gen.normal(0.0, 1.2, D) for c in range(N)}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("dropped", [[], [3]])
def test_backends_agree_with_the_plaintext_sum(updates: dict, backend: str,
                                               dropped: list[int]) -> None:
    agg = make_aggregator(backend, num_clients=N, vector_length=D, clip=CLIP, **FAST[backend])
    res = agg.aggregate(updates, dropouts={"masked": dropped})
    assert res.backend == backend
    assert res.survivors == tuple(c for c in range(N) if c not in dropped)
    plain = sum(np.clip(updates[c], -CLIP, CLIP) for c in res.survivors)
    clipped = sum(int(np.sum(np.abs(updates[c]) > CLIP)) for c in res.survivors)
    if backend == "ckks":
        from veil.he.lattice.ckks import flooding_sigma

        sigma = flooding_sigma(1e-6, D + 1)  # generous error bound for a few fresh additions
        assert np.max(np.abs(res.total - plain)) < 8 * sigma
        assert abs(res.clipped - clipped) <= max(1, 8 * sigma)
    else:  # exact: the integer sum of the quantized updates
        q = agg.quantizer if backend == "paillier" else agg.config.quantizer
        expected = sum(q.quantize(updates[c])[0].astype(np.uint64) for c in res.survivors)
        assert np.array_equal(res.quantized_total, expected)
        assert np.max(np.abs(res.total - plain)) <= len(res.survivors) * q.step / 2 + 1e-9
        assert res.clipped == clipped
    assert res.stats.bytes_sent_per_client > 0 and res.stats.plain_bytes == 4 * D


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_abort_below_threshold(updates: dict, backend: str) -> None:
    agg = make_aggregator(backend, num_clients=N, vector_length=D, clip=CLIP, **FAST[backend])
    with pytest.raises(AggregationAborted, match="below the threshold"):
        agg.aggregate(updates, dropouts={"masked": [0, 1, 2]})


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_reject_bad_input(updates: dict, backend: str) -> None:
    agg = make_aggregator(backend, num_clients=N, vector_length=D, clip=CLIP, **FAST[backend])
    bad = {**updates, 2: np.full(D, np.inf)}
    with pytest.raises(ConfigurationError):
        agg.aggregate(bad)
    with pytest.raises(ConfigurationError, match="values"):
        agg.aggregate({**updates, 1: np.zeros(D + 1)})


def test_unknown_backend_and_insecure_thresholds() -> None:
    with pytest.raises(ConfigurationError, match="unknown aggregation backend"):
        make_aggregator("rot13", num_clients=3, vector_length=2, clip=1.0)
    with pytest.raises(InsecureParametersError):
        make_aggregator("paillier", num_clients=3, vector_length=2, clip=1.0, threshold=1)
    with pytest.raises(InsecureParametersError):
        make_aggregator("masking", num_clients=4, vector_length=2, clip=1.0, threshold=2)
    with pytest.raises(InsecureParametersError):  # Paillier below 112-bit security
        secure_sum({0: [0.0], 1: [1.0]}, clip=1.0, backend="paillier", key_bits=1024)


def test_paillier_secure_default_key() -> None:
    """The secure default (3072-bit key) once, in the default suite."""
    ups = {c: np.linspace(-1, 1, 7) * (c + 1) for c in range(3)}
    res = secure_sum(ups, clip=5.0, backend="paillier")
    assert np.allclose(res.total, np.linspace(-1, 1, 7) * 6, atol=1e-6)
