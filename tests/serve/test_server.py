"""End-to-end tests against a real uvicorn server on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import select
import socket
import time

import numpy as np
import pytest

from veil import errors
from veil.protocols.inference import KIND_ENCRYPTED, pack_frames
from veil.serve import Client, worker
from veil.serve.evaluator import digits_linear


def raw_request(port: int, head: str, body: bytes = b"", *, read_timeout: float = 30.0) -> bytes:
    """Send raw HTTP/1.1 bytes; return the server's answer up to the end of its headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _upload(srv, ctx) -> str:
    body = ctx.public().serialize()
    resp = srv.post("/contexts", body)
    assert resp.status_code in (200, 201), resp.text
    cid = resp.json()["context_id"]
    assert cid == hashlib.sha256(body).hexdigest()
    return cid


def _message(blobs: list[bytes], rows: int, layout: str = "batched") -> bytes:
    header = {"layout": layout, "n_samples": rows, "windows": 0, "count": len(blobs)}
    return pack_frames(KIND_ENCRYPTED, header, blobs)


def _junk_request(ctx, rows: int = 2) -> bytes:
    """A well-formed 64-ciphertext message with one encryption repeated (for the error cases)."""
    return _message([ctx.encrypt(np.linspace(0.0, 1.0, rows)).serialize()] * 64, rows)


def _assert_error(resp, status: int, kind: str | None = None, text: str | None = None) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert err["status"] == status
    if kind is not None:
        assert err["type"] == kind, err
    if text is not None:
        assert text.lower() in err["message"].lower(), err


def _still_serving(srv, client_ctx, digits_data) -> None:
    x, _ = digits_data
    got = Client(srv.url, context=client_ctx).predict(x[:3])
    model = digits_linear()
    np.testing.assert_allclose(got, x[:3] @ model.weight + model.bias, atol=1e-3)


# -- happy path -------------------------------------------------------------------------------


def test_health_and_model_description(digits_server) -> None:
    h = digits_server.get("/health").json()
    assert h["status"] == "ok" and h["workers"] == 2 and h["capacity"] == 4
    m = digits_server.get("/model").json()
    plan = m["plan"]
    assert plan["input_shape"] == [64] and plan["output_size"] == 10
    assert plan["layout"] == "batched" and plan["galois_keys"] is False
    assert plan["params"]["poly_modulus_degree"] >= 8192
    assert m["limits"]["max_request_bytes"] == 16 * 1024 * 1024
    assert "/predict" in digits_server.get("/openapi.json").json()["paths"]


def test_predictions_match_plaintext(digits_server, client_ctx, digits_data) -> None:
    x, y = digits_data
    model = digits_linear()
    with Client(digits_server.url, context=client_ctx) as client:
        got = client.predict(x[:50])
        single = client.predict(x[7])  # one row
    want = x[:50] @ model.weight + model.bias
    assert got.shape == (50, 10)
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (got.argmax(1) == y[:50]).mean() > 0.9
    np.testing.assert_allclose(single, want[7:8], atol=1e-3)


def test_fresh_client_generates_keys_and_uploads_once(digits_server, digits_data) -> None:
    x, _ = digits_data
    client = Client(digits_server.url)  # keygen from GET /model
    assert client.context.has_secret_key
    before = digits_server.state.store and len(digits_server.state.store)
    got = client.predict(x[:4])
    cid = client.upload_context()
    assert len(digits_server.state.store) == before + 1
    assert client.upload_context() == cid
    assert len(digits_server.state.store) == before + 1  # not uploaded again
    # the same client after the server lost the context (eviction): uploads it again by itself
    digits_server.state.store.path(cid).unlink()
    with digits_server.state.store._lock:
        del digits_server.state.store._entries[cid]
    client.predict(x[:1])
    assert digits_server.state.store.contains(cid)
    model = digits_linear()
    np.testing.assert_allclose(got, x[:4] @ model.weight + model.bias, atol=1e-3)
    assert digits_server.get(f"/contexts/{cid}").json()["bytes"] > 0
    client.close()


# -- contexts ---------------------------------------------------------------------------------


def test_context_with_secret_key_is_rejected_and_not_stored(digits_server, client_ctx) -> None:
    body = client_ctx.serialize(include_secret_key=True, expose_secret=True)
    n_before = len(digits_server.state.store)
    resp = digits_server.post("/contexts", body)
    _assert_error(resp, 422, "ConfigurationError", "secret key")
    assert len(digits_server.state.store) == n_before
    cid = hashlib.sha256(body).hexdigest()
    assert not any(cid in p.name for p in digits_server.state.store.directory.iterdir())
    assert not list(digits_server.state.store.directory.glob("*.part"))
    assert digits_server.get(f"/contexts/{cid}").status_code == 404


def test_context_with_other_parameters_is_rejected(digits_server) -> None:
    from veil import he

    # same ring, other primes and scale: refused from the header, before TenSEAL parses it
    other = he.CKKSContext.generate(he.CKKSParams(8192, (50, 30, 50), 30), galois_keys=False)
    n_before = len(digits_server.state.store)
    resp = digits_server.post("/contexts", other.public().serialize())
    _assert_error(resp, 422, "ConfigurationError", "differ")
    assert len(digits_server.state.store) == n_before


@pytest.mark.parametrize("params, galois", [((8192, (60, 40, 40, 60), 40), False),
                                            ((8192, (60, 40, 60), 40), True)])
def test_context_larger_than_the_plan_needs_is_refused_unread(digits_server, params,
                                                              galois) -> None:
    """More primes, or Galois keys the model does not use: over the plan's size bound (413)."""
    from veil import he

    big = he.CKKSContext.generate(he.CKKSParams(*params), galois_keys=galois).public()
    limit = digits_server.get("/model").json()["limits"]["max_context_bytes"]
    body = big.serialize()
    assert len(body) > limit
    _assert_error(digits_server.post("/contexts", body), 413, "SerializationError", "limit")


@pytest.mark.parametrize("body", [b"garbage" * 100, b"VEIL" + bytes(200)])
def test_malformed_context_is_400(digits_server, body: bytes) -> None:
    _assert_error(digits_server.post("/contexts", body), 400, "SerializationError")


def test_truncated_context_is_400(digits_server, client_ctx) -> None:
    body = client_ctx.public().serialize()
    _assert_error(digits_server.post("/contexts", body[: len(body) // 2]), 400)


# -- size limits, before parsing ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "limit_mib"), [("/predict", 16), ("/contexts", 8)])
def test_oversized_content_length_rejected_before_body(digits_server, path, limit_mib) -> None:
    size = limit_mib * 1024 * 1024 + 1
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"X-Veil-Context: {'ab' * 32}\r\nContent-Length: {size}\r\n\r\n")
    t0 = time.monotonic()
    answer = raw_request(digits_server.port, head)  # not a single body byte is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - t0 < 20


def test_oversized_chunked_body_cut_off_at_limit(digits_server) -> None:
    head = ("POST /contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (1024 * 1024) + b"\0" * (1024 * 1024) + b"\r\n"
    answered_after = None
    with socket.create_connection(("127.0.0.1", digits_server.port), timeout=30) as s:
        s.sendall(head.encode())
        try:
            for i in range(64):  # up to 64 MiB, far above the 8 MiB limit
                s.sendall(chunk)
                if i >= 8 and select.select([s], [], [], 0.2)[0]:
                    answered_after = i + 1  # MiB sent when the answer was already there
                    break
        except (BrokenPipeError, ConnectionResetError):
            answered_after = -1
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert answered_after is not None  # answered while the body was still being sent
    assert not list(digits_server.state.store.directory.glob("*.part"))


def test_content_type_and_header_checks(digits_server) -> None:
    _assert_error(digits_server.post("/predict", b"x", headers={"content-type": "text/plain",
                                                                "X-Veil-Context": "ab" * 32}), 415)
    _assert_error(digits_server.post("/predict", b"x"), 400, text="X-Veil-Context")
    _assert_error(digits_server.post("/predict", b"x", headers={"X-Veil-Context": "zz"}), 400)
    _assert_error(digits_server.post("/predict", b"x", headers={"X-Veil-Context": "ab" * 32}),
                  404, "UnknownContext")


# -- bad ciphertexts: 4xx, and the server keeps serving -----------------------------------------


def test_bad_ciphertexts_are_4xx_and_server_keeps_serving(digits_server, client_ctx,
                                                          digits_data) -> None:
    from veil import he

    x, _ = digits_data
    cid = _upload(digits_server, client_ctx)
    hdr = {"X-Veil-Context": cid}
    good = _junk_request(client_ctx)

    def post(body: bytes):
        return digits_server.post("/predict", body, headers=hdr)

    _assert_error(post(os.urandom(5000)), 400, "SerializationError", "not a veil payload")
    _assert_error(post(good[:-1000]), 400, "SerializationError")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    _assert_error(post(bytes(flipped)), 400, "SerializationError", "digest")
    # ciphertexts under other parameters
    other = he.CKKSContext.generate(he.CKKSParams.for_depth(1, precision_bits=30),
                                    galois_keys=False)
    _assert_error(post(_junk_request(other)), 400, "SerializationError")
    # same parameters, another key: refused by the key id the ciphertexts carry
    stranger = he.CKKSContext.generate(client_ctx.params, galois_keys=False)
    _assert_error(post(_junk_request(stranger)), 422, "KeyMismatchError", "key")
    # a well-formed message whose ciphertext frames are garbage
    _assert_error(post(_message([os.urandom(3000)] * 64, 2)), 400, "SerializationError")
    # a message of another kind
    _assert_error(post(client_ctx.encrypt(np.ones(2)).serialize()), 400, "SerializationError",
                  "kind")
    # wrong ciphertext count / layout / sample count / header
    blob = client_ctx.encrypt(x[:2, 0]).serialize()
    _assert_error(post(_message([blob] * 3, 2)), 422, "ConfigurationError",
                  "64 feature ciphertexts")
    _assert_error(post(_message([blob] * 64, 2, layout="single")), 422, "ConfigurationError",
                  "layout")
    _assert_error(post(_message([blob] * 64, 3)), 400, "SerializationError", "shape")
    _assert_error(post(pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": 0,
                                                    "windows": 0, "count": 1}, [blob])), 400)
    _assert_error(post(pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": 2,
                                                    "windows": 0, "count": 7}, [blob])), 400)
    _assert_error(post(pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": 2,
                                                    "windows": 0, "count": 600},
                                   [b"x"] * 600)), 400, "SerializationError", "frames")
    _still_serving(digits_server, client_ctx, digits_data)
    assert digits_server.get("/health").json()["in_flight"] == 0


def test_client_translates_server_errors(digits_server, client_ctx) -> None:
    from veil import he

    other = he.CKKSContext.generate(he.CKKSParams.for_depth(1, precision_bits=30),
                                    galois_keys=False)
    with pytest.raises(errors.KeyMismatchError, match="server's model needs"):
        Client(digits_server.url, context=other).predict(np.zeros(64))
    client = Client(digits_server.url, context=client_ctx)
    with pytest.raises(errors.ConfigurationError, match="rows of shape"):
        client.predict(np.zeros((2, 5)))
    with pytest.raises(errors.ConfigurationError, match="NaN"):
        client.predict(np.full((1, 64), np.nan))
    cid = client.upload_context()
    hdr = {"layout": "batched", "n_samples": 2, "windows": 0, "count": 1}
    with pytest.raises(errors.SerializationError, match="HTTP 400"):
        client._predict_frames(cid, [b"nonsense"], hdr)
    with pytest.raises(errors.ConfigurationError, match="HTTP 422"):
        client._predict_frames(cid, [client_ctx.encrypt(np.ones(2)).serialize()], hdr)


def test_client_refuses_public_context_and_bad_urls() -> None:
    from veil import he

    ctx = he.CKKSContext.generate(he.CKKSParams.for_depth(1), galois_keys=False)
    with pytest.raises(errors.ConfigurationError, match="secret key"):
        Client("http://127.0.0.1:1", context=ctx.public())
    with pytest.raises(errors.ConfigurationError, match="http"):
        Client("ftp://example.org")
    with pytest.raises(errors.ConfigurationError, match="timeout"):
        Client("http://127.0.0.1:1", timeout=0)


def test_unreachable_server_is_party_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(errors.RemoteServiceError, match="could not reach") as info:
            Client(f"http://127.0.0.1:{port}", timeout=5).health()
    assert info.value.phase == "health"


# -- overload, slow bodies, dead workers ----------------------------------------------------------


def test_overload_gets_503_with_retry_after_then_recovers(digits_server, client_ctx,
                                                          digits_data) -> None:
    """Fill every admission slot with *complete* requests queued behind busy workers; the next
    request gets 503 (also through the client, after its retry), health is still answered, and
    capacity returns once the workers are free. (Incomplete bodies hold no slot: see
    test_admission.py.)"""
    state = digits_server.state
    cap = digits_server.get("/health").json()["capacity"]
    cid = _upload(digits_server, client_ctx)
    body = _junk_request(client_ctx)
    busy = [state.pool.current.submit(worker.ping, 20.0) for _ in range(state.cfg.workers)]
    with cf.ThreadPoolExecutor(cap) as senders:
        queued = [senders.submit(digits_server.post, "/predict", body,
                                 {"X-Veil-Context": cid}) for _ in range(cap)]
        deadline = time.monotonic() + 18
        while digits_server.get("/health").json()["in_flight"] < cap:
            assert time.monotonic() < deadline, digits_server.get("/health").json()
            time.sleep(0.05)
        resp = digits_server.post("/predict", body, headers={"X-Veil-Context": cid})
        _assert_error(resp, 503, "Overloaded")
        assert resp.headers["retry-after"] == "1"
        assert digits_server.get("/health").status_code == 200  # health is never queued
        client = Client(digits_server.url, context=client_ctx, retries=1)
        client.model()
        with pytest.raises(errors.RemoteServiceError, match="503") as info:
            client._predict_frames(cid, [b"x"], {"layout": "batched", "n_samples": 1,
                                                 "windows": 0, "count": 1})
        assert info.value.phase == "prediction"
        for f in busy:
            f.result(timeout=60)
        assert all(f.result(timeout=120).status_code != 503 for f in queued)
    deadline = time.monotonic() + 20
    while digits_server.get("/health").json()["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _still_serving(digits_server, client_ctx, digits_data)


def test_dead_worker_is_replaced(digits_server, client_ctx, digits_data) -> None:
    pool = digits_server.state.pool.current
    victim = next(iter(pool._processes.values()))
    victim.kill()
    victim.join(10)
    x, _ = digits_data
    client = Client(digits_server.url, context=client_ctx, retries=3)
    for _ in range(2):  # first call may meet the broken pool (503, retried by the client)
        got = client.predict(x[:2])
    model = digits_linear()
    np.testing.assert_allclose(got, x[:2] @ model.weight + model.bias, atol=1e-3)
    assert digits_server.state.pool.current is not pool
