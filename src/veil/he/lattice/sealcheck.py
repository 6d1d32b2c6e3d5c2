"""Structural pre-check of TenSEAL/SEAL blobs, run before TenSEAL parses them.

SEAL (inside TenSEAL 0.3.18) terminates the whole process (uncaught ``std::__ios_failure``) on
some malformed objects, e.g. a zstd stream that still decompresses but whose nested headers are
garbage. So before any blob reaches TenSEAL, :func:`check_blob` walks it here, in Python:

* the protobuf envelope generically (varint / length-delimited / fixed fields, bounded depth);
* every SEAL object in it (a length-delimited field starting with SEAL's magic ``5E A1``): its
  16-byte header (size, this SEAL build's version, compression mode, reserved, exact length);
* its members after a bounded decompression (zstd or zlib): the nested layout of a Ciphertext /
  public key, relinearization / Galois keys (KSwitchKeys), EncryptionParameters or Plaintext
  (secret key), including every nested SEAL header and size field.

Anything inconsistent is a :class:`~veil.errors.SerializationError` naming what was wrong (never
data values). Valid payloads are unchanged: they pass and are then parsed by TenSEAL as before.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

from veil.errors import SerializationError

__all__ = ["check_blob", "seal_version"]

MAGIC = b"\x5e\xa1"
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr mode, reserved, size
HEADER_SIZE = 16
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
MAX_DEPTH = 4  # protobuf nesting (TenSEAL uses 2)
MAX_RATIO = 64  # decompressed size at most 64 x compressed (+ a small constant)
MAX_OUTPUT = 1 << 30  # and never above 1 GiB
PARMS_ID = 32
_U64 = struct.Struct("<Q")

Blob = Literal["context", "tensor"]


def fail(what: str, msg: str) -> SerializationError:
    return SerializationError(f"{what}: {msg}")


@lru_cache(maxsize=1)
def seal_version() -> tuple[int, int]:
    """(major, minor) that this SEAL build writes, read once from a freshly serialized object."""
    from veil.he.lattice.native import import_tenseal

    ts = import_tenseal()
    ctx = ts._ts_cpp.TenSEALContext.new(ts.SCHEME_TYPE.CKKS.value, 2048, 0, [20, 20],
                                        ts.ENCRYPTION_TYPE.SYMMETRIC.value, 1)
    blob = memoryview(ctx.serialize(False, False, False, False))
    for path, obj in protobuf_fields(blob, "probe", 0, ""):
        if obj[:2] == MAGIC and path == "1":
            _, _, major, minor, _, _, _ = HEADER.unpack_from(obj, 0)
            return major, minor
    raise SerializationError("could not read the SEAL version from a fresh object")


# -- protobuf ---------------------------------------------------------------------------------


def varint(b: memoryview, i: int, what: str) -> tuple[int, int]:
    """The varint at ``b[i:]`` and the position after it."""
    value = shift = 0
    for _ in range(10):
        if i >= len(b):
            raise fail(what, "truncated varint in the protobuf")
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i
    raise fail(what, "overlong varint in the protobuf")


def protobuf_fields(b: memoryview, what: str, depth: int,
                    prefix: str) -> list[tuple[str, memoryview]]:
    """The length-delimited fields of message ``b`` as (dotted path, bytes), nested messages
    walked up to :data:`MAX_DEPTH`; SEAL objects are not entered."""
    out: list[tuple[str, memoryview]] = []
    i = 0
    while i < len(b):
        key, i = varint(b, i, what)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise fail(what, "protobuf field number 0")
        path = f"{prefix}{field}"
        if wire == 0:
            _, i = varint(b, i, what)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > len(b):
                raise fail(what, f"truncated fixed-size protobuf field {path}")
        elif wire == 2:
            n, i = varint(b, i, what)
            if n > len(b) - i:
                raise fail(what, f"protobuf field {path} overruns its message")
            value = b[i : i + n]
            i += n
            out.append((path, value))
            if value[:2] != MAGIC and len(value):
                out += nested_fields(value, what, depth + 1, path)
        else:
            raise fail(what, f"unsupported protobuf wire type {wire} in field {path}")
    return out


def nested_fields(b: memoryview, what: str, depth: int,
                  path: str) -> list[tuple[str, memoryview]]:
    """Fields of ``b`` if it parses as a message; otherwise ``b`` is opaque data (e.g. a packed
    repeated field) and must then hold no SEAL magic at all (fail closed)."""
    if depth <= MAX_DEPTH:
        try:
            return protobuf_fields(b, what, depth, path + ".")
        except SerializationError:
            pass
    if MAGIC in bytes(b):
        raise fail(what, f"protobuf field {path} is not a message but holds a SEAL object")
    return []


# -- SEAL objects -----------------------------------------------------------------------------


def header(b: memoryview, pos: int, what: str, *, nested: bool) -> tuple[int, int]:
    """Check the SEAL header at ``b[pos:]``; return (compression mode, object size)."""
    if len(b) - pos < HEADER_SIZE:
        raise fail(what, "truncated SEAL header")
    magic, size, major, minor, compr, reserved, total = HEADER.unpack_from(b, pos)
    if magic != 0xA15E or size != HEADER_SIZE:
        raise fail(what, "bad SEAL header magic or header size")
    if (major, minor) != seal_version():
        raise fail(what, "SEAL header version is not the version of this SEAL build")
    if compr not in (COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD) or nested and compr != COMPR_NONE:
        raise fail(what, "SEAL header has an invalid compression mode")
    if reserved != 0:
        raise fail(what, "SEAL header reserved field is not zero")
    if total < HEADER_SIZE or total > len(b) - pos:
        raise fail(what, "SEAL header size does not match the object's length")
    return compr, total


def inflate(body: memoryview, compr: int, what: str) -> memoryview:
    """``body`` decompressed, refusing output above the cap, truncation and trailing input."""
    cap = min(MAX_RATIO * len(body) + 4096, MAX_OUTPUT)
    if compr == COMPR_NONE:
        return body
    try:
        if compr == COMPR_ZLIB:
            dz = zlib.decompressobj()
            out = dz.decompress(body, cap + 1)
            if len(out) > cap:
                raise fail(what, "SEAL object decompresses beyond the size limit")
            if not dz.eof or dz.unconsumed_tail or dz.unused_data:
                raise fail(what, "SEAL object's zlib stream is truncated or has trailing data")
            return memoryview(out)
        import zstandard

        declared = zstandard.get_frame_parameters(body).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > cap:
            raise fail(what, "SEAL object decompresses beyond the size limit")
        # an unknown size is bounded by max_output_size; extra data (a second frame) is refused
        return memoryview(zstandard.ZstdDecompressor().decompress(
            body, max_output_size=cap, allow_extra_data=False))
    except SerializationError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, ImportError
        raise fail(what, "SEAL object does not decompress completely within the size limit "
                         f"({type(exc).__name__})") from exc


class Members:
    """A cursor over a SEAL object's decompressed members; every read is bounds-checked."""

    def __init__(self, b: memoryview, what: str) -> None:
        self.b, self.pos, self.what = b, 0, what

    def take(self, n: int, name: str) -> memoryview:
        if n > len(self.b) - self.pos:
            raise fail(self.what, f"SEAL {name} is truncated")
        out = self.b[self.pos : self.pos + n]
        self.pos += n
        return out

    def u64(self, name: str) -> int:
        return int(_U64.unpack_from(self.take(8, name))[0])

    def nested(self, name: str) -> Members:
        """The members of the nested (uncompressed) SEAL object at the cursor."""
        _, total = header(self.b, self.pos, f"{self.what} ({name})", nested=True)
        inner = Members(self.b[self.pos + HEADER_SIZE : self.pos + total], self.what)
        self.pos += total
        return inner

    def end(self, name: str) -> None:
        if self.pos != len(self.b):
            raise fail(self.what, f"SEAL {name} has {len(self.b) - self.pos} unexpected bytes")


def dyn_array(m: Members, count: int, name: str) -> None:
    """A nested DynArray of ``count`` 64-bit words."""
    arr = m.nested(name)
    if arr.u64(name) != count:
        raise fail(m.what, f"SEAL {name} element count is inconsistent with its object")
    arr.take(8 * count, name)
    arr.end(name)


def ciphertext(m: Members) -> None:
    m.take(PARMS_ID, "ciphertext parms_id")
    if m.take(1, "ciphertext")[0] > 1:
        raise fail(m.what, "SEAL ciphertext NTT flag is not a boolean")
    size, degree, moduli = m.u64("ciphertext"), m.u64("ciphertext"), m.u64("ciphertext")
    m.take(16, "ciphertext scale/correction factor")
    full = size * degree * moduli
    if full * 4 > len(m.b):
        raise fail(m.what, "SEAL ciphertext dimensions exceed the object's length")
    arr = m.nested("ciphertext data")
    count = arr.u64("ciphertext data")
    if count == full:
        arr.take(8 * count, "ciphertext data")
        arr.end("ciphertext data")
    elif size == 2 and count * 2 == full:  # seeded: c1 is regenerated from a PRNG seed
        arr.take(8 * count, "ciphertext data")
        arr.end("ciphertext data")
        seed = m.nested("ciphertext seed")
        if seed.take(1, "ciphertext seed")[0] not in (1, 2):  # blake2xb, shake256
            raise fail(m.what, "SEAL ciphertext seed names an unknown PRNG")
        seed.take(64, "ciphertext seed")
        seed.end("ciphertext seed")
    else:
        raise fail(m.what, "SEAL ciphertext data element count is inconsistent with its object")
    m.end("ciphertext")


def kswitch_keys(m: Members) -> None:
    m.take(PARMS_ID, "key-switching keys parms_id")
    dim1 = m.u64("key-switching keys")
    if dim1 * 8 > len(m.b):
        raise fail(m.what, "SEAL key-switching key count exceeds the object's length")
    for _ in range(dim1):
        dim2 = m.u64("key-switching keys")
        if dim2 * HEADER_SIZE > len(m.b) - m.pos:
            raise fail(m.what, "SEAL key-switching key count exceeds the object's length")
        for _ in range(dim2):
            ciphertext(m.nested("key-switching key"))
    m.end("key-switching keys")


def encryption_parameters(m: Members) -> None:
    if m.take(1, "encryption parameters")[0] not in (1, 2, 3):
        raise fail(m.what, "SEAL encryption parameters have an unknown scheme")
    m.u64("encryption parameters")
    count = m.u64("encryption parameters")
    if count > 64:
        raise fail(m.what, "SEAL encryption parameters have too many moduli")
    for _ in range(count + 1):  # the coefficient moduli, then the plain modulus
        modulus = m.nested("modulus")
        modulus.u64("modulus")
        modulus.end("modulus")
    m.end("encryption parameters")


def plaintext(m: Members) -> None:
    m.take(PARMS_ID, "plaintext parms_id")
    count = m.u64("plaintext")
    m.take(8, "plaintext scale")
    if count * 8 > len(m.b):
        raise fail(m.what, "SEAL plaintext size exceeds the object's length")
    dyn_array(m, count, "plaintext data")
    m.end("plaintext")


Layout = Callable[[Members], None]
LAYOUTS: dict[str, dict[str, Layout]] = {
    # TenSEALContextProto: 1 parameters, 2 public part (1 public key, 4 relin keys, 5 Galois
    # keys), 3 private part (1 secret key). CKKSVectorProto / BFVVectorProto: 2 the ciphertext.
    "context": {"1": encryption_parameters, "2.1": ciphertext, "2.4": kswitch_keys,
                "2.5": kswitch_keys, "3.1": plaintext},
    "tensor": {"2": ciphertext},
}


def check_blob(blob: bytes, *, kind: Blob, what: str) -> None:
    """Raise SerializationError unless every SEAL object in the TenSEAL ``blob`` (a serialized
    context or ciphertext vector) is structurally sound; call before TenSEAL parses it."""
    layouts = LAYOUTS[kind]
    fields = protobuf_fields(memoryview(blob), what, 0, "")
    for path, value in fields:
        layout = layouts.get(path)
        if layout is None:
            if value[:2] == MAGIC:
                raise fail(what, f"unexpected SEAL object in protobuf field {path}")
            continue
        if value[:2] != MAGIC:
            raise fail(what, f"protobuf field {path} is not a SEAL object")
        compr, total = header(value, 0, what, nested=False)
        if total != len(value):
            raise fail(what, "SEAL header size does not match the object's length")
        layout(Members(inflate(value[HEADER_SIZE:], compr, what), what))
