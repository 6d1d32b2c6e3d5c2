"""Uploaded contexts must match the model's plan, and no client can evict another's context.

Unit tests of :mod:`veil.serve.store` (ownership, per-client quota, a full store refuses instead
of evicting, the plan-derived size bound, the header check) and an end-to-end test with clients
on three loopback addresses (127.0.0.1/2/3) against a real uvicorn server.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from veil import errors
from veil.serve.store import ContextStore, check_context_header, context_size_limit

OCTET = {"content-type": "application/octet-stream"}


def _put(store: ContextStore, payload: bytes, client: str) -> tuple[str, bool]:
    up = store.new_upload()
    up.write(payload)
    cid = up.finish()
    try:
        return cid, store.commit(cid, up, client)
    finally:
        up.discard()


def test_store_quota_is_per_client_and_full_store_refuses(tmp_path) -> None:
    store = ContextStore(tmp_path, max_contexts=3, per_client=2)
    a1, ok1 = _put(store, b"a1", "A")
    a2, ok2 = _put(store, b"a2", "A")
    b1, ok3 = _put(store, b"b1", "B")
    assert ok1 and ok2 and ok3 and len(store) == 3
    # the store is full: C's upload is refused, nobody's context is touched
    assert store.room_for("C") is not None
    c1, ok = _put(store, b"c1", "C")
    assert not ok and not store.contains(c1) and not store.path(c1).exists()
    assert all(store.contains(x) for x in (a1, a2, b1))
    # B may replace only within its own quota... B has 1 of 2 and the store is full: refused
    assert not _put(store, b"b2", "B")[1] and store.contains(a1) and store.contains(a2)
    # A at its quota replaces its OWN least recently used context (a1), never B's
    assert store.acquire(a2, "A") and store.acquire(a1, "A")
    store.release(a2)  # a1 is still pinned: a2 is A's only candidate
    a3, ok = _put(store, b"a3", "A")
    assert ok and not store.contains(a2) and store.contains(a1) and store.contains(b1)
    store.release(a1)
    # visibility: a client sees and pins only what it owns
    assert store.contains(a1, "A") and not store.contains(a1, "B")
    assert not store.acquire(b1, "A") and store.size_of(b1, "A") is None
    assert store.size_of(b1, "B") == 2


def test_store_uploading_known_bytes_adds_an_owner_and_idle_contexts_make_room(tmp_path) -> None:
    store = ContextStore(tmp_path, max_contexts=2, per_client=2, idle_s=0.0)
    a, _ = _put(store, b"shared", "A")
    assert store.commit(a, None, "B")  # B uploaded the same bytes: now both own it
    assert store.contains(a, "B") and store.contains(a, "A")
    b, ok = _put(store, b"b", "B")
    assert ok and len(store) == 2
    # idle_s=0: every unpinned context counts as idle, so C's upload takes the oldest one
    assert store.acquire(b, "B")
    c, ok = _put(store, b"c", "C")
    assert ok and store.contains(c) and store.contains(b) and not store.contains(a)
    store.release(b)
    # contexts from an earlier run have no owner: a full store replaces them first
    again = ContextStore(tmp_path, max_contexts=2, per_client=1)
    assert len(again) == 2 and not again.contains(b, "B")
    d, ok = _put(again, b"d", "D")
    assert ok and again.contains(d, "D") and len(again) == 2


PLANS = [((2048, (27, 27), 20), False), ((4096, (40, 20, 40), 20), True),
         ((8192, (60, 40, 60), 40), False), ((8192, (60, 40, 60), 40), True)]


def _plan(params, galois: bool):
    from veil import he
    from veil.protocols.inference import PublicPlan

    p = he.CKKSParams(*params)
    return PublicPlan("batched", (64,), 10, 1, p.describe(), galois, {"kind": "features"})


@pytest.mark.parametrize("params, galois", PLANS)
def test_size_limit_fits_the_plan_and_galois_keys_do_not(params, galois) -> None:
    from veil import he

    ctx = he.CKKSContext.generate(he.CKKSParams(*params), galois_keys=galois).public()
    size = len(ctx.serialize())
    assert size <= context_size_limit(_plan(params, galois))
    if galois:  # the keys a model without rotations does not need are over its bound
        assert size > context_size_limit(_plan(params, False))


def test_header_check_against_the_plan() -> None:
    from veil import he
    from veil.he import serialize as envelope

    params = (2048, (27, 27), 20)
    ctx = he.CKKSContext.generate(he.CKKSParams(*params), galois_keys=False)
    body = ctx.public().serialize()
    check_context_header(body[:96 * 1024], _plan(params, False))
    with pytest.raises(errors.ConfigurationError, match="does not need"):
        check_context_header(_galois_claim(body, True), _plan(params, False))
    with pytest.raises(errors.ConfigurationError, match="lacks Galois keys"):
        check_context_header(body, _plan(params, True))
    with pytest.raises(errors.ConfigurationError, match="differ"):
        check_context_header(body, _plan((2048, (27, 27), 21), False))
    with pytest.raises(errors.ConfigurationError, match="SECRET"):
        check_context_header(ctx.serialize(include_secret_key=True, expose_secret=True),
                             _plan(params, False))
    for bad in (b"", b"garbage" * 10, ctx.encrypt([1.0]).serialize(), body[:80]):
        with pytest.raises(errors.SerializationError):
            check_context_header(bad, _plan(params, False))
    deep = envelope.pack("ckks.context.public", _raw_frame(b'{"params":' + b"[" * 50_000))
    with pytest.raises(errors.SerializationError, match="nested"):
        check_context_header(deep, _plan(params, False))


def _raw_frame(head: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(head)) + head + struct.pack(">I", 0)


def _galois_claim(body: bytes, galois: bool) -> bytes:
    """The same context with its header's Galois claim rewritten (digest recomputed)."""
    from veil.he import serialize as envelope
    from veil.he.lattice.native import frame, unframe

    env = envelope.unpack(body, kind="ckks.context.public")
    header, blobs = unframe(env.body, "test")
    return envelope.pack(env.kind, frame({**header, "galois": galois}, blobs),
                         params_hash=env.params_hash)


@pytest.fixture(scope="module")
def quota_server(running_server):
    from veil.serve import ServerConfig, create_app

    cfg = ServerConfig(workers=1, queue_size=1, max_contexts=2, contexts_per_client=1)
    with running_server(create_app("linear:digits", config=cfg)) as srv:
        yield srv


def _http(srv, address: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        transport=httpx.HTTPTransport(local_address=address))


def test_one_client_cannot_see_use_or_evict_anothers_context(quota_server, digits_data) -> None:
    import numpy as np

    from veil import he
    from veil.serve import Client
    from veil.serve.evaluator import digits_linear

    params = digits_linear().info.params
    ctxs = [he.CKKSContext.generate(params, galois_keys=False) for _ in range(4)]
    bodies = [c.public().serialize() for c in ctxs]
    ids = [hashlib.sha256(b).hexdigest() for b in bodies]
    alice = Client(quota_server.url, context=ctxs[0])  # 127.0.0.1
    ids[0] = alice.upload_context()
    with _http(quota_server, "127.0.0.2") as bob, _http(quota_server, "127.0.0.3") as carol:
        assert bob.get(f"/contexts/{ids[0]}").status_code == 404  # not Bob's
        r = bob.post("/predict", content=b"x", headers={**OCTET, "X-Veil-Context": ids[0]})
        assert r.status_code == 404, r.text
        assert bob.post("/contexts", content=bodies[1], headers=OCTET).status_code == 201
        r = carol.post("/contexts", content=bodies[2], headers=OCTET)  # store full: refused
        assert r.status_code == 507 and r.json()["error"]["type"] == "ContextStoreFull", r.text
        r = bob.post("/contexts", content=bodies[3], headers=OCTET)  # replaces Bob's own
        assert r.status_code == 201, r.text
        assert bob.get(f"/contexts/{ids[1]}").status_code == 404
        assert bob.get(f"/contexts/{ids[3]}").status_code == 200
        assert carol.get(f"/contexts/{ids[2]}").status_code == 404
    assert quota_server.get(f"/contexts/{ids[0]}").status_code == 200  # Alice's survived
    x, _ = digits_data
    model = digits_linear()
    np.testing.assert_allclose(alice.predict(x[:2]), x[:2] @ model.weight + model.bias,
                               atol=1e-3)
    alice.close()


@pytest.mark.parametrize("kwargs", [{"contexts_per_client": 0}, {"bodies_per_client": True},
                                    {"context_idle_s": float("nan")}, {"context_idle_s": -1}])
def test_config_checks_the_quota_settings(kwargs) -> None:
    from veil.serve import ServerConfig

    with pytest.raises(errors.ConfigurationError, match=next(iter(kwargs))):
        ServerConfig(**kwargs)


def test_default_server_reads_no_more_context_than_the_plan_needs() -> None:
    """The default limit used to be 256 MiB (a context with unneeded Galois keys fitted)."""
    from fastapi.testclient import TestClient

    from veil import he
    from veil.serve import create_app
    from veil.serve.evaluator import digits_linear

    info = digits_linear().info
    limit = TestClient(create_app("linear:digits")).get("/model").json()["limits"][
        "max_context_bytes"]  # no lifespan: no workers are started for this
    assert limit == context_size_limit(info.plan)
    fits = he.CKKSContext.generate(info.params, galois_keys=False).public().serialize()
    assert len(fits) <= limit < 4 * 1024 * 1024
