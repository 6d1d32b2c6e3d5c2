"""Unit tests without a server: config checks, the context store, parameters, model specs."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil import errors
from veil.serve.config import ServerConfig
from veil.serve.store import ContextStore


@pytest.mark.parametrize(
    "kwargs",
    [{"workers": 0}, {"workers": True}, {"queue_size": -1}, {"max_request_bytes": 0},
     {"request_deadline_s": 0}, {"body_timeout_s": float("nan")}, {"max_contexts": 1.5},
     {"retry_after_s": "1"}],
)
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(errors.ConfigurationError, match=next(iter(kwargs))):
        ServerConfig(**kwargs)


def test_config_capacity() -> None:
    assert ServerConfig(workers=3, queue_size=5).max_in_flight == 8


def _put(store: ContextStore, payload: bytes) -> str:
    up = store.new_upload()
    up.write(payload)
    cid = up.finish()
    store.commit(cid, up)
    return cid


def test_store_evicts_least_recently_used_but_never_pinned(tmp_path) -> None:
    store = ContextStore(tmp_path, max_contexts=2)
    a, b = _put(store, b"a"), _put(store, b"b")
    assert store.acquire(a)  # pinned and most recently used
    c = _put(store, b"c")
    assert not store.contains(b) and store.contains(a) and store.contains(c)
    assert not store.path(b).exists()
    d = _put(store, b"d")  # a is pinned, so c goes
    assert store.contains(a) and not store.contains(c) and store.contains(d)
    store.release(a)
    _put(store, b"e")
    assert not store.contains(a)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{x}.ctx" for x in (d, _put(store, b"e")))
    assert not store.acquire("00" * 32)


def test_store_reopens_existing_and_drops_partial_uploads(tmp_path) -> None:
    store = ContextStore(tmp_path, max_contexts=4)
    cid = _put(store, os.urandom(100))
    partial = store.new_upload()
    partial.write(b"half")
    again = ContextStore(tmp_path, max_contexts=4)
    assert again.contains(cid) and again.size_of(cid) == 100
    assert not partial.path.exists()


def test_params_from_server_cannot_lower_security() -> None:
    from veil.serve.evaluator import params_from_description

    weak = {"scheme": "ckks", "poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 40, 60],
            "scale_bits": 40}
    with pytest.raises(errors.InsecureParametersError):
        params_from_description(weak)
    assert params_from_description(weak, allow_insecure=True).poly_modulus_degree == 4096
    for bad in ({**weak, "allow_insecure": True}, {**weak, "scheme": "bfv"}, [1, 2],
                {**weak, "coeff_mod_bit_sizes": "60,40"}):
        with pytest.raises(errors.SerializationError):
            params_from_description(bad)


@given(st.sampled_from([1, 2, 3]), st.sampled_from([30, 40]))
def test_params_description_round_trip(depth: int, precision: int) -> None:
    from veil import he
    from veil.serve.evaluator import params_from_description

    p = he.CKKSParams.for_depth(depth, precision_bits=precision)
    assert params_from_description(p.describe()) == p


def test_unknown_model_spec() -> None:
    from veil.serve.evaluator import load_evaluator

    for spec in ("nope", "zoo:", "zoo:a:b:c", "linear:cats"):
        with pytest.raises(errors.ConfigurationError, match="unknown"):
            load_evaluator(spec)
    with pytest.raises(errors.ConfigurationError, match="layout"):
        load_evaluator("zoo:digits-mlp-poly:diagonal")
    with pytest.raises(errors.ConfigurationError, match="string"):
        load_evaluator(3)


def test_check_rows() -> None:
    import numpy as np

    from veil.serve.evaluator import check_rows, digits_linear

    info = digits_linear().info
    assert check_rows(np.zeros(64), info).shape == (1, 64)
    assert check_rows(np.zeros((5, 64)), info).shape == (5, 64)
    for bad in (np.zeros((2, 63)), np.zeros((0, 64)), np.zeros((5, 8, 8)),
                [[float("inf")] * 64]):
        with pytest.raises(errors.ConfigurationError):
            check_rows(bad, info)


def test_request_limit_follows_the_model() -> None:
    from veil.protocols.inference import PublicPlan
    from veil.serve.config import MiB

    def plan(shape: tuple[int, ...], n: int, bits: list[int]) -> PublicPlan:
        params = {"scheme": "ckks", "poly_modulus_degree": n, "coeff_mod_bit_sizes": bits,
                  "scale_bits": 40}
        return PublicPlan("batched", shape, 10, 1, params, False, {"kind": "features"})

    small = plan((64,), 8192, [60, 40, 60])
    big = plan((1, 8, 8), 16384, [60] + [40] * 5 + [60])
    assert ServerConfig().request_limit(small) == 32 * MiB
    assert ServerConfig().request_limit(big) == int(1.25 * 64 * 2 * 16384 * 6 * 8) + MiB
    assert ServerConfig(max_request_bytes=5).request_limit(big) == 5


def test_check_rows_says_when_there_are_no_rows() -> None:
    import numpy as np

    from veil.serve.evaluator import check_rows, digits_linear

    for empty in (np.zeros((0, 64)), [], np.zeros((0, 8, 8))):
        with pytest.raises(errors.ConfigurationError, match="no rows"):
            check_rows(empty, digits_linear().info)


def test_models_declare_their_input_domain() -> None:
    from veil.serve.evaluator import check_domain, digits_linear

    assert digits_linear().info.to_json()["input_domain"] == [0.0, 1.0]
    assert check_domain(None) is None and check_domain([0, 16]) == (0.0, 16.0)
    for bad in ((1, 0), (0, float("inf")), "ab", (1,)):
        with pytest.raises(errors.ConfigurationError, match="domain"):
            check_domain(bad)


def test_ckks_contexts_have_no_galois_keys_unless_asked() -> None:
    from veil import he

    params = he.CKKSParams.for_depth(1)
    assert not he.CKKSContext.generate(params).has_galois_keys
    assert he.CKKSContext.generate(params, galois_keys=True).has_galois_keys


def test_worker_reloads_a_stored_context_beyond_the_request_limit(tmp_path) -> None:
    """A worker whose cache lacks the context (another worker checked it, or it was evicted)
    reloads it from the store: under the plan's context bound, not the request limit."""
    import hashlib
    import time

    from veil import models
    from veil.models import zoo
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames
    from veil.serve import worker
    from veil.serve.evaluator import load_evaluator

    ev = load_evaluator("zoo:digits-logreg:single")
    ctx = ev.plan.keygen()  # the plan's kind of context (packed layout: a SlotContext)
    public = ctx.public().serialize()
    cid = hashlib.sha256(public).hexdigest()
    (tmp_path / f"{cid}.ctx").write_bytes(public)
    worker.init_worker(ev, str(tmp_path), 2)  # a fresh worker: empty cache
    x = zoo.digits((64,))[2][:1].double().numpy()
    enc = models.encrypt_input(ctx, x[0], ev.info.plan)
    body = pack_frames(KIND_ENCRYPTED, {"layout": "single", "n_samples": 1, "windows": 0,
                                        "count": len(enc.tensors)},
                       [t.serialize() for t in enc.tensors])
    (tmp_path / "request").write_bytes(body)
    limit = 2 * len(body)
    assert len(public) > limit  # the context is far larger than one request
    out = worker.evaluate(cid, str(tmp_path / "request"), limit, 16, time.monotonic() + 600)
    header, frames = unpack_frames(out, KIND_ENCRYPTED, max_bytes=limit)
    got = models.decrypt_output(ctx, models.EncryptedValues(
        "single", 1, [ctx.load_tensor(f) for f in frames], 0, ev.info.output_size))
    import torch

    with torch.no_grad():
        want = ev.net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert got.argmax(1) == want.argmax(1)


def test_zoo_batched_models_use_the_smallest_ring_their_inputs_allow() -> None:
    """Inputs in [0, 1] (enforced by clients) let ``zoo:digits-mlp`` run at N = 8192 instead of
    16384: half the request size and evaluation time of the default ``veil serve`` model."""
    from veil.serve.evaluator import load_evaluator

    info = load_evaluator("zoo:digits-mlp").info
    assert info.domain == (0.0, 1.0) and not info.galois_keys
    assert info.plan.params["poly_modulus_degree"] == 8192
    assert info.plan.params["scale_bits"] == 28  # the most precision N = 8192 holds
