"""Inference wire format (veil.protocols.inference): round trip and every malformed case."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import SerializationError
from veil.he import serialize as envelope
from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames


@given(header=st.dictionaries(st.text(max_size=5), st.integers(), max_size=4),
       frames=st.lists(st.binary(max_size=50), max_size=5))
def test_round_trip(header, frames):
    assert unpack_frames(pack_frames(KIND_ENCRYPTED, header, frames), KIND_ENCRYPTED) == (
        header, frames)


def _raw(body: bytes) -> bytes:
    return envelope.pack(KIND_ENCRYPTED, body)


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"", "truncated"),
     (struct.pack(">I", 5) + b"{}", "truncated"),
     (struct.pack(">I", 2) + b"[]" + struct.pack(">I", 0), "object"),
     (struct.pack(">I", 2) + b"{x" + struct.pack(">I", 0), "JSON"),
     (struct.pack(">I", 2) + b"{}" + struct.pack(">I", 1) + struct.pack(">Q", 9) + b"abc",
      "truncated"),
     (struct.pack(">I", 2) + b"{}" + struct.pack(">I", 0) + b"junk", "trailing"),
     (struct.pack(">I", 2) + b"{}" + struct.pack(">I", 1 << 20), "frames")],
)
def test_malformed_messages(body, match):
    with pytest.raises(SerializationError, match=match):
        unpack_frames(_raw(body), KIND_ENCRYPTED)


def test_wrong_kind_and_size_limit():
    msg = pack_frames(KIND_ENCRYPTED, {}, [b"x" * 1000])
    with pytest.raises(SerializationError, match="kind"):
        unpack_frames(msg, "models.plan")
    with pytest.raises(SerializationError, match="exceeds"):
        unpack_frames(msg, KIND_ENCRYPTED, max_bytes=500)
