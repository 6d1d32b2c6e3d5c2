"""The binary envelope every serialized Veil object travels in."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import SerializationError
from veil.he import serialize as ser

PARAMS = ser.params_digest({"scheme": "test", "n": 4096})


@given(body=st.binary(max_size=4096), kind=st.sampled_from(["a", "ckks.vector", "x" * 64]))
def test_round_trip(body: bytes, kind: str) -> None:
    env = ser.unpack(ser.pack(kind, body, params_hash=PARAMS), kind=kind, params_hash=PARAMS)
    assert (env.kind, env.params_hash, env.body) == (kind, PARAMS, body)


def test_known_answer_layout() -> None:
    blob = ser.pack("k", b"\x01\x02", params_hash=bytes(range(32)))
    head = b"VEIL" + bytes([1, 1]) + b"k" + bytes(range(32)) + struct.pack(">Q", 2)
    assert blob == head + b"\x01\x02" + hashlib.sha256(head + b"\x01\x02").digest()


def test_params_digest_is_canonical() -> None:
    assert ser.params_digest({"a": 1, "b": [1, 2]}) == ser.params_digest({"b": [1, 2], "a": 1})
    assert ser.params_digest({"a": 1}) != ser.params_digest({"a": 2})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:10], "too short"),
        (lambda b: b[:-1], "length mismatch"),
        (lambda b: b + b"\x00", "length mismatch"),
        (lambda b: b"XEIL" + b[4:], "not a Veil payload"),
        (lambda b: b[:4] + b"\x09" + b[5:], "unsupported envelope version"),
        (lambda b: b[:5] + b"\x00" + b[6:], "corrupt envelope header"),
        (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:], "digest mismatch"),
        (lambda b: b[:6] + b"other" + b[11:], "wrong payload kind"),
    ],
)
def test_malformed_payloads_are_rejected(mutate, message: str) -> None:
    blob = ser.pack("thing", b"payload-bytes" * 4, params_hash=PARAMS)
    with pytest.raises(SerializationError, match=message):
        ser.unpack(mutate(blob), kind="thing", params_hash=PARAMS)


def test_wrong_params_and_size_limit_and_type() -> None:
    blob = ser.pack("thing", b"body", params_hash=PARAMS)
    with pytest.raises(SerializationError, match="made for other parameters"):
        ser.unpack(blob, kind="thing", params_hash=ser.params_digest({"n": 1}))
    with pytest.raises(SerializationError, match="exceeds the limit"):
        ser.unpack(blob, kind="thing", max_bytes=len(blob) - 1)
    with pytest.raises(SerializationError, match="expected bytes"):
        ser.unpack("not bytes", kind="thing")  # type: ignore[arg-type]
    assert ser.unpack(blob, kind={"thing", "other"}).body == b"body"


def test_pack_rejects_bad_kind_and_params() -> None:
    with pytest.raises(SerializationError):
        ser.pack("", b"")
    with pytest.raises(SerializationError):
        ser.pack("é", b"")
    with pytest.raises(SerializationError):
        ser.pack("k", b"", params_hash=b"short")


def test_every_single_bit_flip_and_truncation_is_caught() -> None:
    blob = ser.pack("ckks.vector", bytes(range(256)) * 2, params_hash=PARAMS)
    count = 0
    for i in range(len(blob)):
        for bit in (0, 3, 7):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(SerializationError):
                ser.unpack(bytes(bad), kind="ckks.vector", params_hash=PARAMS)
            count += 1
    for cut in range(len(blob)):
        with pytest.raises(SerializationError):
            ser.unpack(blob[:cut], kind="ckks.vector", params_hash=PARAMS)
        count += 1
    assert count > 2000
