"""Slow senders hold no admission slots: a slot is taken only once a body is complete.

A real uvicorn server on 127.0.0.1 with 3 admission slots (1 worker, queue 2). Three raw
connections trickle a body one byte at a time; meanwhile a legitimate client still gets its
prediction (the old server took the slot before the body and answered 503). A client may send
at most ``bodies_per_client`` bodies at once (429 beyond), and trickled bodies are cut after
``body_timeout_s`` (408).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

BODY_TIMEOUT_S = 6.0


@pytest.fixture(scope="module")
def slot_server(running_server):
    from veil.serve import ServerConfig, create_app
    from veil.serve.config import MiB

    cfg = ServerConfig(workers=1, queue_size=2, max_request_bytes=16 * MiB,
                       body_timeout_s=BODY_TIMEOUT_S, bodies_per_client=4)
    with running_server(create_app("linear:digits", config=cfg)) as srv:
        yield srv


def _trickler(port: int, path: str, extra: str = "") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
               f"{extra}Content-Length: 100000\r\n\r\n").encode() + b"\0")
    return s


def _wait_receiving(srv, n: int) -> None:
    for _ in range(400):  # at most ~20 s
        if srv.get("/health").json()["receiving"] == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"server never reported {n} bodies being received")


def _status(s: socket.socket) -> bytes:
    return s.recv(65536).split(b"\r\n", 1)[0]


def test_trickling_senders_hold_no_slots_and_are_cut(slot_server, client_ctx,
                                                     digits_data) -> None:
    from veil.serve import Client
    from veil.serve.evaluator import digits_linear

    assert slot_server.get("/health").json()["capacity"] == 3
    client = Client(slot_server.url, context=client_ctx, retries=0)
    cid = client.upload_context()
    socks = [_trickler(slot_server.port, "/predict", f"X-Veil-Context: {cid}\r\n")
             for _ in range(2)] + [_trickler(slot_server.port, "/contexts")]
    try:
        _wait_receiving(slot_server, 3)
        for _ in range(3):  # a byte every half second on every connection: they stay alive
            time.sleep(0.5)
            for s in socks:
                s.sendall(b"\0")
        health = slot_server.get("/health").json()
        assert health["in_flight"] == 0 and health["receiving"] == 3, health  # no slot held
        x, _ = digits_data
        got = client.predict(x[:3])  # the 4th body of this client: still within its cap
        model = digits_linear()
        np.testing.assert_allclose(got, x[:3] @ model.weight + model.bias, atol=1e-3)
        # a 4th concurrent body is fine, a 5th exceeds bodies_per_client = 4
        socks.append(_trickler(slot_server.port, "/contexts"))
        _wait_receiving(slot_server, 4)
        fifth = _trickler(slot_server.port, "/contexts")
        socks.append(fifth)
        assert _status(fifth).startswith(b"HTTP/1.1 429")
        # the trickled bodies are cut once body_timeout_s has passed since they started
        for s in socks[:3]:
            s.settimeout(BODY_TIMEOUT_S + 30)
            assert _status(s).startswith(b"HTTP/1.1 408")
    finally:
        for s in socks:
            s.close()
    assert slot_server.get("/health").json()["in_flight"] == 0
    np.testing.assert_allclose(client.predict(x[:1]), x[:1] @ model.weight + model.bias,
                               atol=1e-3)
