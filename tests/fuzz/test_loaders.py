"""Every loader that takes bytes from another party answers hostile input with a Veil error.

The harness (``_harness.py``, run in a subprocess so a crash or hang cannot take pytest with it)
feeds each loader structure-aware mutations: JSON headers nested 50,000 deep, integers of
thousands of digits, NaN/1e999, wrong kinds, missing/duplicate/unknown keys, lying lengths and
counts, damaged nested envelopes, bit flips and truncations, all re-enveloped with a valid digest
so the layer under the envelope sees them. Any exception that is not a ``VeilError`` (the old
code let ``RecursionError`` and ``ValueError`` from Python's int-string limit through) fails.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

HARNESS = pathlib.Path(__file__).with_name("_harness.py")
ROOT = HARNESS.parents[2]
LOADERS = {
    "envelope", "load_json", "ckks.context", "ckks.context.secret", "ckks.tensor",
    "bfv.context", "bfv.tensor", "paillier.public_key", "paillier.private_key",
    "paillier.vector", "paillier.packed", "models.encrypted.frames", "models.encrypted",
    "models.architecture", "models.plan", "mpc.message", "shamir.share",
    "secagg.advertise", "secagg.roster", "secagg.share_keys", "secagg.delivery", "secagg.masked",
    "secagg.survivors", "secagg.consistency", "secagg.unmask_request", "secagg.unmask",
}


def _run(seed: int, per_loader: int, timeout: int) -> dict:
    proc = subprocess.run([sys.executable, str(HARNESS), str(seed), str(per_loader)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, (
        f"fuzz harness died with code {proc.returncode} (negative: a signal, i.e. a crash in a "
        f"native parser)\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def _check(report: dict, per_loader: int) -> None:
    assert set(report) == LOADERS
    escapes = {name: r["escapes"] for name, r in report.items() if r["escape_count"]}
    assert not escapes, escapes
    for name, r in report.items():
        assert r["rejected"] + r["accepted"] == per_loader, (name, r)
        assert r["rejected"] > 0, (name, r)  # the mutations reached the checks


def test_every_loader_turns_hostile_input_into_veil_errors() -> None:
    _check(_run(seed=20261203, per_loader=250, timeout=600), 250)


@pytest.mark.slow
def test_every_loader_turns_hostile_input_into_veil_errors_large() -> None:
    _check(_run(seed=7, per_loader=4000, timeout=1800), 4000)


def test_bounded_json_parser_limits() -> None:
    from veil.errors import SerializationError
    from veil.he.serialize import load_json

    for bad in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' + b"9" * 4301 + b"}",
                b'{"a":1e999}', b'{"a":NaN}', b'{"a":1,"a":2}', b'"\\"' * 1000, b"\xff",
                b"[" * 17 + b"]" * 17, b"{}" * 10, b" " * 65):
        with pytest.raises(SerializationError):
            load_json(bad, what="test", max_bytes=64 if bad == b" " * 65 else 1 << 20)
    assert load_json(b'{"a":"[[[[[[[[[[[[[[[[[[[[","b":[' + b"[" * 14 + b"]" * 14 + b"]}",
                     what="test", max_bytes=1 << 20)["a"] == "[" * 20
    assert load_json(b"-" + b"9" * 40, what="t", max_bytes=99) == -int("9" * 40)


@pytest.mark.parametrize("body", [b"[" * 50_000 + b"]" * 50_000, b'{"error":' + b"9" * 5000 + b"}",
                                  b'{"a":NaN}', b"[1]", b"\xff", b'{"context_id":' * 40])
def test_client_turns_hostile_server_answers_into_veil_errors(body, monkeypatch) -> None:
    """The server is another party too: its JSON answers go through the bounded parser."""
    from veil.errors import VeilError
    from veil.serve import Client

    client = Client("http://127.0.0.1:9")  # nothing listens: every answer below is faked
    assert isinstance(client._translate(400, body, "test"), VeilError)
    monkeypatch.setattr(client, "_send", lambda *a, **k: (200, body))
    with pytest.raises(VeilError):
        client._json("/model", "model description")
