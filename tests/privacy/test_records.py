"""Signed result records (issue #14): sign, verify, write, read; every alteration is caught."""

from __future__ import annotations

import base64
import copy
import datetime
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import load_pem_x509_certificate
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import AuthenticationError, ConfigurationError, SerializationError
from veil.privacy import read_record, sign_record, verify_record, write_record
from veil.privacy.records import MAX_RECORD_BYTES
from veil.trust.identity import Identity

# Inside the validity (now - 5 min .. now + 2 days) of every ephemeral certificate this module
# makes, even one made late in a long test run (collection happens long before some tests).
WHEN = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).replace(microsecond=0)
MANIFEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.ephemeral("alice")


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.ephemeral("bob")


@pytest.fixture(scope="module")
def record(alice) -> dict:
    return sign_record({"mean": np.float64(41.5), "count": np.int64(120),
                        "hist": np.array([1, 2, 3]), "cov": np.eye(2) * 0.5,
                        "nested": {"ok": True, "items": (1, 2.5, "x", None)}},
                       identity=alice, manifest_digest=MANIFEST, statistic="mean,histogram",
                       parties=["alice", "bob"], when=WHEN)


def test_record_fields_and_round_trip(record, alice) -> None:
    assert record["version"] == 1 and record["statistic"] == "mean,histogram"
    assert record["computed_by"] == "alice" and record["fingerprint"] == alice.fingerprint
    assert record["parties"] == ["alice", "bob"] and record["manifest"] == MANIFEST
    assert record["time"] == WHEN.strftime("%Y-%m-%dT%H:%M:%SZ")
    result = verify_record(record, alice.certificate_pem)
    assert result == {"mean": 41.5, "count": 120, "hist": [1, 2, 3],
                      "cov": [[0.5, 0.0], [0.0, 0.5]],
                      "nested": {"ok": True, "items": [1, 2.5, "x", None]}}
    assert type(result["count"]) is int and type(result["mean"]) is float
    json.dumps(record, allow_nan=False)  # plain JSON


def test_signature_is_ecdsa_p256_over_the_canonical_json(record, alice) -> None:
    """The documented format, checked with cryptography directly (what openssl would do)."""
    body = {k: v for k, v in record.items() if k != "signature"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    cert = load_pem_x509_certificate(alice.certificate_pem)
    cert.public_key().verify(base64.b64decode(record["signature"]), data,
                             ec.ECDSA(hashes.SHA256()))


def test_write_and_read_record(record, alice, tmp_path) -> None:
    path = write_record(tmp_path / "result.json", record)
    back = read_record(path)
    assert back == record
    assert verify_record(back, alice.certificate_pem)["mean"] == 41.5


@pytest.mark.parametrize(("field", "value"), [
    ("result", {"mean": 41.6, "count": 120, "hist": [1, 2, 3], "cov": [[0.5, 0.0], [0.0, 0.5]],
                "nested": {"ok": True, "items": [1, 2.5, "x", None]}}),
    ("statistic", "median"),
    ("parties", ["alice"]),
    ("manifest", None),
    ("time", "2001-01-01T00:00:00Z"),
])
def test_any_altered_field_fails(record, alice, field, value) -> None:
    bad = copy.deepcopy(record)
    bad[field] = value
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_record(bad, alice.certificate_pem)


def test_altered_result_in_a_file_fails(record, alice, tmp_path) -> None:
    path = write_record(tmp_path / "r.json", record)
    path.write_text(path.read_text().replace("41.5", "14.5"))
    with pytest.raises(AuthenticationError, match="altered"):
        verify_record(read_record(path), alice.certificate_pem)


def test_signer_fields_and_other_certificate(record, alice, bob) -> None:
    with pytest.raises(AuthenticationError, match="not by the certificate given"):
        verify_record(record, bob.certificate_pem)
    renamed = {**record, "computed_by": "bob"}
    with pytest.raises(AuthenticationError, match="computed_by"):
        verify_record(renamed, alice.certificate_pem)
    moved = {**record, "fingerprint": bob.fingerprint}  # claims bob signed it
    with pytest.raises(AuthenticationError):
        verify_record(moved, bob.certificate_pem)
    bob_signed = sign_record({"mean": 1.0}, identity=bob, manifest_digest=None,
                             statistic="mean", parties=["bob"])
    forged = {**bob_signed, "computed_by": "alice", "fingerprint": alice.fingerprint}
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_record(forged, alice.certificate_pem)
    other_sig = {**record, "signature": bob_signed["signature"]}
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_record(other_sig, alice.certificate_pem)


def test_time_outside_the_certificate_validity(alice) -> None:
    late = sign_record({"x": 1}, identity=alice, manifest_digest=None, statistic="count",
                       parties=["alice"], when=WHEN + datetime.timedelta(days=30))
    with pytest.raises(AuthenticationError, match="validity"):
        verify_record(late, alice.certificate_pem)


@pytest.mark.parametrize("change", ["missing", "extra", "version", "b64", "type", "list"])
def test_malformed_records(record, alice, change) -> None:
    bad = copy.deepcopy(record)
    if change == "missing":
        del bad["time"]
    elif change == "extra":
        bad["note"] = "x"
    elif change == "version":
        bad["version"] = 2
    elif change == "b64":
        bad["signature"] = "not base64!"
    elif change == "type":
        bad["result"] = [1, 2]
    else:
        bad["parties"] = "alice"
    with pytest.raises(SerializationError):
        verify_record(bad, alice.certificate_pem)
    with pytest.raises(SerializationError):
        verify_record("not a record", alice.certificate_pem)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        verify_record(record, b"not a certificate")


@pytest.mark.parametrize(("result", "match"), [
    ({"mean": float("nan")}, "nan"),
    ({"sum": [1.0, float("inf")]}, r"result\['sum'\]\[1\] is inf"),
    ({"v": np.array([1.0, np.nan])}, "finite"),
    ({"obj": object()}, "cannot hold"),
    ({1: 2.0}, "string keys"),
])
def test_results_must_be_finite_plain_json(alice, result, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        sign_record(result, identity=alice, manifest_digest=None, statistic="s",
                    parties=["alice"])


def test_sign_record_checks_its_arguments(alice) -> None:
    kw = {"identity": alice, "manifest_digest": None, "statistic": "mean", "parties": ["a"]}
    with pytest.raises(ConfigurationError, match="mapping"):
        sign_record([1.0], **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Identity"):
        sign_record({"m": 1}, **{**kw, "identity": "alice"})
    with pytest.raises(ConfigurationError, match="parties"):
        sign_record({"m": 1}, **{**kw, "parties": "alice"})
    with pytest.raises(ConfigurationError, match="statistic"):
        sign_record({"m": 1}, **{**kw, "statistic": ""})
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        sign_record({"m": 1}, **kw, when=datetime.datetime(2025, 1, 1))
    with pytest.raises(ConfigurationError, match="bytes"):
        sign_record({"m": "x" * MAX_RECORD_BYTES}, **kw)


def test_read_record_limits_and_errors(tmp_path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_RECORD_BYTES + 1))
    with pytest.raises(SerializationError, match="more than"):
        read_record(big)
    for name, text in [("nan.json", '{"result": NaN}'), ("bad.json", "{not json"),
                       ("deep.json", "[" * 100_000), ("list.json", "[1, 2]"),
                       ("bin.json", b"\xff\xfe")]:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(SerializationError):
            read_record(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_record(tmp_path / "missing.json")
    with pytest.raises(SerializationError):
        write_record(tmp_path / "x.json", {"result": {}})


_IDENT = [Identity.ephemeral("alice")]
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=25, deadline=None)
@given(result=st.dictionaries(st.text(min_size=1, max_size=6), _json, max_size=5))
def test_round_trip_law(result) -> None:
    ident = _IDENT[0]
    rec = sign_record(result, identity=ident, manifest_digest=MANIFEST, statistic="any",
                      parties=["alice"], when=WHEN)
    assert verify_record(json.loads(json.dumps(rec)), ident.certificate_pem) == result

