"""Cost of serving: one encrypted prediction over HTTP vs the same evaluation in process.

``make bench`` runs these with pytest-benchmark; compare the medians:

* ``inprocess``: the raw foundation, ``linear_combination`` of 64 feature ciphertexts
  (``linear:digits``, 4096 rows in one batch) in this process;
* ``http``: the same ciphertexts sent to a local ``veil.serve`` server (loopback, one worker)
  and the result read back (serialization, envelope checks, worker hand-off, HTTP);
* ``client``: ``Client.predict`` end to end (encrypt, send, evaluate, decrypt).

The ratio ``http / inprocess`` is the overhead of serving. The load test (16 concurrent clients,
throughput and tail latency) is ``benchmarks/load_serve.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import pytest

ROWS = 4096


@pytest.fixture(scope="module")
def setup():
    import uvicorn
    from sklearn.datasets import load_digits

    from veil import he
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames
    from veil.serve import Client, ServerConfig, create_app
    from veil.serve.evaluator import digits_linear

    model = digits_linear()
    app = create_app(model, config=ServerConfig(workers=1, queue_size=4))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ctx = he.CKKSContext.generate(model.info.params, galois_keys=False)
    client = Client(url, context=ctx)
    cid = client.upload_context()
    x = np.resize(load_digits().data / 16.0, (ROWS, 64))
    cts = [ctx.encrypt(np.ascontiguousarray(x[:, i])) for i in range(64)]
    payload = pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": ROWS,
                                           "windows": 0, "count": 64},
                          [c.serialize() for c in cts])
    public = he.CKKSContext.load(ctx.public().serialize())
    local = [public.load_tensor(c.serialize()) for c in cts]
    yield {"model": model, "public": public, "local": local, "payload": payload, "url": url,
           "cid": cid, "client": client, "x": x}
    client.close()
    server.should_exit = True
    thread.join(60)


def test_inprocess(benchmark, setup) -> None:
    run = setup["model"].bind(setup["public"])
    out = benchmark.pedantic(run, args=(setup["local"], ROWS, 0), rounds=5)
    assert len(out) == 10


def test_http(benchmark, setup) -> None:
    with httpx.Client(base_url=setup["url"], timeout=120) as http:
        def call() -> bytes:
            r = http.post("/predict", content=setup["payload"], headers={
                "content-type": "application/octet-stream", "X-Veil-Context": setup["cid"]})
            assert r.status_code == 200, r.text
            return r.content

        body = benchmark.pedantic(call, rounds=5)
    assert len(body) > 0


def test_client(benchmark, setup) -> None:
    got = benchmark.pedantic(setup["client"].predict, args=(setup["x"],), rounds=3)
    model = setup["model"]
    np.testing.assert_allclose(got, setup["x"] @ model.weight + model.bias, atol=1e-3)
