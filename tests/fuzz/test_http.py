"""HTTP-level fuzz: mutated /predict and /contexts bodies and headers never get a 5xx.

The FastAPI app (real worker processes, via its test client) receives structure-aware mutations
of a valid prediction request (the envelope, its JSON header, the ciphertext envelopes inside
it) and of a valid public-context upload, plus hostile headers (context ids, content types,
lengths). Every answer must be 2xx or 4xx; a 500 (an escaped exception) fails the test, as does
a server that stops answering a valid request afterwards.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from tests.fuzz import _harness as h

OCTET = "application/octet-stream"


@pytest.fixture(scope="module")
def app_client():
    from fastapi.testclient import TestClient

    from veil.serve import ServerConfig, create_app
    from veil.serve.config import MiB

    cfg = ServerConfig(workers=1, queue_size=4, body_timeout_s=30.0, max_context_bytes=8 * MiB,
                       contexts_per_client=2)
    with TestClient(create_app("linear:digits", config=cfg), raise_server_exceptions=False) as tc:
        yield tc


@pytest.fixture(scope="module")
def client_ctx():
    from veil import he
    from veil.serve.evaluator import digits_linear

    return he.CKKSContext.generate(digits_linear().info.params, galois_keys=False)


def _valid(ctx, rows: int = 2) -> bytes:
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames

    frames = [ctx.encrypt(np.full(rows, i / 64)).serialize() for i in range(64)]
    return pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": rows, "windows": 0,
                                        "count": 64}, frames)


def _tensor_inner(blob: bytes, rng: random.Random) -> bytes:
    return h.mutate_envelope(blob, rng, h.mutate_framed)


def _predict_body(good: bytes, rng: random.Random) -> bytes:
    return h.mutate_envelope(good, rng, lambda b, r: h.mutate_framed(b, r, _tensor_inner))


def _context_body(good: bytes, rng: random.Random) -> bytes:
    return h.mutate_envelope(good, rng, h.mutate_framed)


def _headers(rng: random.Random, cid: str) -> dict[str, str]:
    k = rng.randrange(12)
    hdr = {"content-type": OCTET, "X-Veil-Context": cid}
    if k == 0:
        hdr["X-Veil-Context"] = rng.choice(("", "ab" * 31, "zz" * 32, "AB" * 32 + " ",
                                            "0" * 64, "1" * 5000, "é" * 64))
    elif k == 1:
        hdr["content-type"] = rng.choice(("text/plain", "application/json", "", "x" * 300))
    elif k == 2:
        del hdr["X-Veil-Context"]
    return hdr


def test_http_fuzz_never_answers_5xx(app_client, client_ctx) -> None:
    tc = app_client
    rng = random.Random(20261203)
    public = client_ctx.public().serialize()
    up = tc.post("/contexts", content=public, headers={"content-type": OCTET})
    assert up.status_code in (200, 201), up.text
    cid = up.json()["context_id"]
    good = _valid(client_ctx)
    assert tc.post("/predict", content=good,
                   headers={"content-type": OCTET, "X-Veil-Context": cid}).status_code == 200
    statuses: dict[int, int] = {}
    bad = []
    for i in range(240):
        if i % 4 == 3:
            path, body, hdr = "/contexts", _context_body(public, rng), {"content-type": OCTET}
        else:
            path, body, hdr = "/predict", _predict_body(good, rng), _headers(rng, cid)
        if rng.random() < 0.03:
            hdr["content-length"] = rng.choice(("²", "9" * 5000, "-1", "1e3", " 12"))
        # latin-1 bytes: httpx sends them as they are (str values must be ASCII)
        resp = tc.post(path, content=body, headers={k: v.encode("latin-1")
                                                    for k, v in hdr.items()})
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            bad.append((path, resp.status_code, resp.text[:300]))
        elif resp.status_code >= 400:
            assert resp.json()["error"]["status"] == resp.status_code
    assert not bad, (bad[:5], statuses)
    assert sum(v for k, v in statuses.items() if 400 <= k < 500) > 150, statuses
    # still serving, with the original context (a mutated upload may have replaced it: re-send)
    tc.post("/contexts", content=public, headers={"content-type": OCTET})
    assert tc.post("/predict", content=good,
                   headers={"content-type": OCTET, "X-Veil-Context": cid}).status_code == 200
