"""One served model in both CKKS layouts: ``GET /model`` lists them, the client chooses per call.

``zoo:digits-logreg`` (the smallest zoo model: batched at N = 4096, packed single layout with a
2.5 MB context) served by a real uvicorn server in process, so the tests can look into its
context store; ``veil serve`` as a subprocess for the ``:single`` / ``--layouts`` pins.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from veil import errors

SPEC = "zoo:digits-logreg"


@pytest.fixture(scope="module")
def both_server(running_server, tmp_path_factory):
    from veil.serve import ServerConfig, create_app

    cfg = ServerConfig(workers=1, queue_size=4, store_dir=tmp_path_factory.mktemp("store"))
    with running_server(create_app(SPEC, config=cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    """Test images in [0, 1] and the served function's plaintext argmax."""
    import torch

    from veil.models import zoo
    from veil.serve.evaluator import load_evaluator

    ev = load_evaluator(SPEC)
    x = zoo.digits((64,))[2][:80].reshape(80, -1).double().numpy()
    with torch.no_grad():
        want = ev.net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    return x, want


def test_model_lists_both_layouts_with_what_a_client_needs(both_server) -> None:
    from veil.serve.plans import plan_rotations, public_plan_from_json

    data = both_server.get("/model").json()
    assert data["default_layout"] == "batched" and data["plan"]["layout"] == "batched"
    by = {e["layout"]: e for e in data["layouts"]}
    assert list(by) == ["batched", "single"]
    single, batched = by["single"], by["batched"]
    assert single["context"]["kind"] == "SlotContext" and single["context"]["galois_keys"]
    plan = public_plan_from_json(single["plan"])
    assert single["context"]["rotations"] == list(plan_rotations(plan))  # exactly the plan's
    assert batched["context"] == {"kind": "CKKSContext", "galois_keys": False,
                                  "rotations": None}
    assert single["plan"]["input_encoding"]["kind"] == "packed"
    assert batched["rows_per_request"] == batched["slots"] and single["rows_per_request"] == 1
    for entry in (single, batched):
        cost = entry["cost"]
        assert cost["predicted_s"] > 0 and cost["request_bytes"] > 0 and cost["context_bytes"] > 0
        assert entry["limits"]["max_context_bytes"] > 0
    assert single["cost"]["predicted_s"] < batched["cost"]["predicted_s"]


def test_auto_uses_single_for_one_row_and_batched_for_many(both_server, reference) -> None:
    from veil.serve import Client

    x, want = reference
    with Client(both_server.url) as client:
        assert client.layouts == ("batched", "single")
        one = client.predict(x[:1])
        assert client.last_layout == "single"
        assert client.stats["uploads"] == {"single": 1}
        assert client.stats["requests"] == {"single": 1}
        assert client.stats["bytes"]["sent"] > 0 and client.stats["bytes"]["received"] > 0
        many = client.predict(x[:64])
        assert client.last_layout == "batched"
        assert client.stats["uploads"] == {"single": 1, "batched": 1}
        assert client.stats["requests"] == {"single": 1, "batched": 1}
        client.predict(x[1:2])  # both contexts stored: no further upload
        assert client.stats["uploads"] == {"single": 1, "batched": 1}
        ids = {lay: client.upload_context(lay) for lay in ("single", "batched")}
    np.testing.assert_array_equal(one.argmax(1), want[:1].argmax(1))
    np.testing.assert_array_equal(many.argmax(1), want[:64].argmax(1))
    store = both_server.state.store
    assert store.layouts_of("127.0.0.1") == {"single": 1, "batched": 1}
    assert {lay: store.layout_of(cid) for lay, cid in ids.items()} == {
        "single": "single", "batched": "batched"}


def test_layout_override_and_unoffered_layouts(both_server, reference, veil_serve) -> None:
    from veil.serve import Client

    x, want = reference
    with Client(both_server.url, layout="batched") as client:
        got = client.predict(x[:1])
        assert client.last_layout == "batched" and set(client.stats["uploads"]) == {"batched"}
        got2 = client.predict(x[:3], layout="single")
        assert client.last_layout == "single" and client.stats["requests"]["single"] == 3
    np.testing.assert_array_equal(got.argmax(1), want[:1].argmax(1))
    np.testing.assert_array_equal(got2.argmax(1), want[:3].argmax(1))
    with pytest.raises(errors.ConfigurationError, match="'auto', 'batched' or 'single'"):
        Client(both_server.url, layout="fast")
    with veil_serve("--model", f"{SPEC}:single", "--workers", "1") as srv, \
            Client(srv.url) as client:
        data = client.model()
        assert [e["layout"] for e in data["layouts"]] == ["single"]
        assert client.predict(x[:64]).shape == (64, 10)  # auto: the only layout
        assert client.stats["requests"] == {"single": 64}
        with pytest.raises(errors.ConfigurationError, match=r"not offered in the 'batched'.*"
                           r"\['single'\]"):
            client.predict(x[:1], layout="batched")
        assert client.stats["uploads"] == {"single": 1}
    assert srv.returncode == 0 and "Traceback" not in srv.output, srv.output


def test_cli_layouts_option_pins_one_layout(veil_serve) -> None:
    import httpx

    with veil_serve("--model", SPEC, "--layouts", "batched", "--workers", "1") as srv:
        data = httpx.get(srv.url + "/model", timeout=30).json()
        assert [e["layout"] for e in data["layouts"]] == ["batched"]
        up = httpx.post(srv.url + "/contexts?layout=single", content=b"x" * 100,
                        headers={"content-type": "application/octet-stream"}, timeout=30)
        assert up.status_code == 422 and up.json()["error"]["type"] == "ConfigurationError"
        assert "--layouts" in up.json()["error"]["message"]
    assert srv.returncode == 0 and "Traceback" not in srv.output, srv.output


def test_wrong_layout_context_combinations_are_refused(both_server, reference) -> None:
    """A context of one layout with a request naming (or encrypted in) the other: 4xx."""
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames
    from veil.serve import Client

    x, _ = reference
    with Client(both_server.url) as client:
        client.predict(x[:1], layout="single")
        client.predict(x[:2], layout="batched")
        single_id, batched_id = client.upload_context("single"), client.upload_context("batched")
        single_ctx = client.context_for("single")
        lay = client._layouts["single"]  # the client's own encoder, to build raw bodies
        frames, header = lay.encrypt(single_ctx, x[:1])
        body = pack_frames(KIND_ENCRYPTED, header, frames)
        public = client._layouts["batched"].public  # the bytes of the stored batched context
    post = both_server.post
    # the request names 'single' but its context is the batched one: refused before the body
    r = post("/predict", body, {"X-Veil-Context": batched_id, "X-Veil-Layout": "single"})
    assert r.status_code == 422 and "uploaded for the 'batched' layout" in r.text
    # single-layout ciphertexts sent with the batched context (no layout named): refused
    r = post("/predict", body, {"X-Veil-Context": batched_id})
    assert 400 <= r.status_code < 500 and r.json()["error"]["type"], r.text
    relabeled = pack_frames(KIND_ENCRYPTED, {**header, "layout": "batched"}, frames)
    r = post("/predict", relabeled, {"X-Veil-Context": batched_id, "X-Veil-Layout": "batched"})
    assert 400 <= r.status_code < 500, r.text  # SlotContext ciphertexts under a CKKSContext
    r = post("/predict", body, {"X-Veil-Context": single_id, "X-Veil-Layout": "diagonal"})
    assert r.status_code == 422 and "offers ['batched', 'single']" in r.text
    # a batched context uploaded as the single layout's: the context check refuses it
    r = post("/contexts?layout=single", public)
    assert r.status_code == 422 and r.json()["error"]["type"] == "ConfigurationError"
    assert hashlib.sha256(public).hexdigest() == batched_id
    assert both_server.state.store.layout_of(batched_id) == "batched"  # unchanged
    r = post("/predict", body, {"X-Veil-Context": single_id, "X-Veil-Layout": "single"})
    assert r.status_code == 200  # and the server still serves
    assert both_server.get("/health").json()["status"] == "ok"


def test_choose_layout_rule() -> None:
    from veil.serve.layouts import BATCH_THRESHOLD, choose_layout

    offered = {"batched": {"cost": {"predicted_s": 3.0}, "rows_per_request": 4096},
               "single": {"cost": {"predicted_s": 0.1}, "rows_per_request": 1}}
    assert choose_layout(1, offered) == "single"
    assert choose_layout(20, offered) == "single" and choose_layout(40, offered) == "batched"
    assert choose_layout(5, offered, threshold=5) == "batched"
    blind = {k: {"cost": {}, "rows_per_request": v["rows_per_request"]}
             for k, v in offered.items()}
    assert choose_layout(BATCH_THRESHOLD - 1, blind) == "single"
    assert choose_layout(BATCH_THRESHOLD, blind) == "batched"
    assert choose_layout(10_000, {"single": offered["single"]}) == "single"
    # request bytes count: a 30 MB batched request costs about 3 s more than its compute
    heavy = {"batched": {"cost": {"predicted_s": 3.0, "request_bytes": 30_000_000},
                         "rows_per_request": 4096},
             "single": {"cost": {"predicted_s": 0.1, "request_bytes": 200_000},
                        "rows_per_request": 1}}
    assert choose_layout(40, heavy) == "single" and choose_layout(60, heavy) == "batched"
