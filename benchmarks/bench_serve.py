"""Cost of serving: one encrypted prediction over HTTP vs the same evaluation in process.

``make bench`` runs these with pytest-benchmark; compare the medians:

* ``inprocess``: the raw foundation, ``linear_combination`` of 64 feature ciphertexts
  (``linear:digits``, 4096 rows in one batch) in this process;
* ``http``: the same ciphertexts sent to a local ``veil.serve`` server (loopback, one worker)
  and the result read back (serialization, envelope checks, worker hand-off, HTTP);
* ``client``: ``Client.predict`` end to end (encrypt, send, evaluate, decrypt).

The ratio ``http / inprocess`` is the overhead of serving. The load test (16 concurrent clients,
throughput and tail latency) is ``benchmarks/load_serve.py``.

Layouts, side by side in one run (``python benchmarks/bench_serve.py layouts [--model SPEC]``,
default ``zoo:digits-mlp`` served in both layouts, one worker): one row with the layout that was
the default before (``batched``) and with the default now (``auto``: single), then a 256-row
batch with ``auto`` (batched) and forced ``single``. Per case: seconds per ``predict`` call
(median), requests, request and answer bytes on the wire, and the one-time context upload.
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
    from sklearn.datasets import load_digits

    from veil import he
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames
    from veil.serve import Client, ServerConfig, create_app
    from veil.serve.evaluator import digits_linear

    model = digits_linear()
    app = create_app(model, config=ServerConfig(workers=1, queue_size=4))
    server, thread, url = _serve_in_thread(app)
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


def _serve_in_thread(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _case(url: str, x, layout: str, repeats: int) -> dict:
    """Seconds per predict call, requests and bytes per call, context upload bytes."""
    from veil.serve import Client

    with Client(url, layout=layout, timeout=600) as client:
        client.predict(x)  # first call: keygen and context upload, not timed
        upload = client.stats["bytes"]["sent"]
        times, before = [], dict(client.stats["bytes"])
        reqs = sum(client.stats["requests"].values())
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict(x)
            times.append(time.perf_counter() - t0)
        calls = repeats
        sent = (client.stats["bytes"]["sent"] - before["sent"]) / calls
        got = (client.stats["bytes"]["received"] - before["received"]) / calls
        per_call = (sum(client.stats["requests"].values()) - reqs) / calls
        upload_bytes = upload - sent  # the first call sent one call's requests plus the context
        return {"layout": client.last_layout, "s_per_call": float(np.median(times)),
                "requests": per_call, "sent": sent, "received": got,
                "context_bytes": upload_bytes}


def compare_layouts(spec: str = "zoo:digits-mlp", rows: int = 256, repeats: int = 3) -> list:
    """The four cases of the module docstring; prints a table, returns its rows."""
    from veil.models import zoo
    from veil.serve import ServerConfig, create_app

    t0 = time.perf_counter()
    app = create_app(spec, config=ServerConfig(workers=1, queue_size=4))
    t_plans = time.perf_counter() - t0
    server, thread, url = _serve_in_thread(app)
    t_start = time.perf_counter() - t0
    described = app.state.veil.model_json("bench")
    x = zoo.digits((64,))[2][:rows].reshape(rows, -1).double().numpy()
    cases = [("1 row, before: batched", x[:1], "batched", repeats),
             ("1 row, now: auto", x[:1], "auto", repeats),
             (f"{rows} rows, auto", x, "auto", max(1, repeats - 1)),
             (f"{rows} rows, forced single", x, "single", 1)]
    out = []
    try:
        print(f"{spec}: layouts {[e['layout'] for e in described['layouts']]}, plans compiled "
              f"in {t_plans:.1f} s, server answering after {t_start:.1f} s")
        for e in described["layouts"]:
            print(f"  {e['layout']:8s} hint: {e['cost']}")
        print(f"{'case':28s} {'layout':8s} {'s/call':>8s} {'req/call':>8s} {'MB sent':>9s} "
              f"{'MB recv':>9s} {'ctx MB':>7s}")
        for name, data, layout, reps in cases:
            r = _case(url, data, layout, reps)
            out.append({"case": name, **r})
            print(f"{name:28s} {r['layout']:8s} {r['s_per_call']:8.3f} {r['requests']:8.0f} "
                  f"{r['sent'] / 1e6:9.2f} {r['received'] / 1e6:9.2f} "
                  f"{r['context_bytes'] / 1e6:7.1f}", flush=True)
    finally:
        server.should_exit = True
        thread.join(60)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["layouts"])
    parser.add_argument("--model", default="zoo:digits-mlp")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compare_layouts(args.model, args.rows, args.repeats)
