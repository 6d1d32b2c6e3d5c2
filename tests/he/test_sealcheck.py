"""The structural pre-check of SEAL blobs (``veil.he.lattice.sealcheck``).

SEAL 4.x inside TenSEAL 0.3.18 aborts the process on some malformed objects; the pre-check must
refuse them with a SerializationError before TenSEAL parses, and let every valid payload through.
"""

from __future__ import annotations

import pathlib
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import zstandard

from veil.errors import SerializationError
from veil.he import serialize as envelope
from veil.he.lattice.bfv import BFVContext
from veil.he.lattice.ckks import CKKSContext
from veil.he.lattice.native import frame, unframe
from veil.he.lattice.sealcheck import check_blob, seal_version
from veil.he.params import BFVParams, CKKSParams, batching_prime

DATA = pathlib.Path(__file__).with_name("data")
ROOT = pathlib.Path(__file__).parents[2]
HDR = struct.Struct("<HBBBBHQ")


@pytest.fixture(scope="module")
def ckks() -> CKKSContext:
    return CKKSContext.generate(CKKSParams(2048, (27, 27), 20), galois_keys=True)


@pytest.fixture(scope="module")
def bfv() -> BFVContext:
    return BFVContext.generate(BFVParams(2048, batching_prime(16, 2048), (27, 27)),
                               galois_keys=True)


# -- helpers: open an envelope down to one SEAL object, change it, close it again ------------------


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _replace(msg: bytes, path: list[int], fn: Callable[[bytes], bytes]) -> bytes:
    """``msg`` with the length-delimited field at ``path`` replaced by ``fn(old value)``."""
    out, i = bytearray(), 0
    while i < len(msg):
        start = i
        key, i = _varint(msg, i)
        wire = key & 7
        if wire == 2:
            n, j = _varint(msg, i)
            value, i = msg[j : j + n], j + n
            if key >> 3 == path[0]:
                value = fn(value) if len(path) == 1 else _replace(value, path[1:], fn)
                out += _enc_varint(key) + _enc_varint(len(value)) + value
                continue
        elif wire == 0:
            _, i = _varint(msg, i)
        else:
            i += 8 if wire == 1 else 4
        out += msg[start:i]
    return bytes(out)


def _members(obj: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(obj[16:])


def _seal(members: bytes, *, compr: int = 2, **fields: int) -> bytes:
    body = {1: zlib.compress, 0: lambda b: b}.get(compr, zstandard.ZstdCompressor().compress)(
        members)
    h = dict(magic=0xA15E, hs=16, major=seal_version()[0], minor=seal_version()[1], compr=compr,
             res=0, size=16 + len(body))
    h.update(fields)
    return HDR.pack(*h.values()) + body


def _blob(data: bytes) -> tuple[envelope.Envelope, dict, list[bytes]]:
    kind = data[6 : 6 + data[5]].decode()
    env = envelope.unpack(data, kind=kind)
    header, blobs = unframe(env.body, kind)
    return env, header, blobs


def _rewrap(env: envelope.Envelope, header: dict, blobs: list[bytes]) -> bytes:
    return envelope.pack(env.kind, frame(header, blobs), params_hash=env.params_hash)


def _patch(members: bytes, pos: int, new: bytes) -> bytes:
    """``members`` with ``new`` written at ``pos`` (-1: at the first nested SEAL header)."""
    pos = members.index(b"\x5e\xa1") if pos < 0 else pos
    return members[:pos] + new + members[pos + len(new):]


# -- the saved abort -------------------------------------------------------------------------------


def test_saved_abort_payload_is_a_serialization_error_in_a_subprocess() -> None:
    code = ("import sys\nfrom veil.errors import SerializationError\n"
            "from veil.he.lattice.ckks import CKKSContext\n"
            "try:\n    CKKSContext.load(open(sys.argv[1], 'rb').read())\n"
            "except SerializationError as e:\n    print('REFUSED', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(DATA / "seal_abort_1.bin")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "ciphertext data" in proc.stdout


# -- valid payloads still load ------------------------------------------------------------------


@pytest.mark.parametrize("secret", [False, True])
def test_valid_ckks_contexts_and_tensors_load_and_decrypt(ckks: CKKSContext, secret: bool) -> None:
    for ctx in (ckks, CKKSContext.generate(ckks.params, galois_keys=False)):
        loaded = CKKSContext.load(ctx.serialize(include_secret_key=secret, expose_secret=True))
        assert loaded.has_galois_keys == ctx.has_galois_keys
        x = np.linspace(-1, 1, 1500)
        t = ctx.load_tensor(loaded.encrypt(x).serialize())
        np.testing.assert_allclose(ctx.decrypt(t), x, atol=1e-2)


@pytest.mark.parametrize("secret", [False, True])
def test_valid_bfv_contexts_and_tensors_load_and_decrypt(bfv: BFVContext, secret: bool) -> None:
    for ctx in (bfv, BFVContext.generate(bfv.params, galois_keys=False)):
        loaded = BFVContext.load(ctx.serialize(include_secret_key=secret, expose_secret=True))
        assert loaded.has_galois_keys == ctx.has_galois_keys
        x = np.arange(-700, 800)
        t = ctx.load_tensor(loaded.encrypt(x).serialize())
        np.testing.assert_array_equal(ctx.decrypt(t), x)


# -- targeted mutations of nested headers and size fields -----------------------------------------

# (protobuf path of the SEAL object, offset in its members, new bytes, expected message part)
CONTEXT_MUTATIONS = [
    ([2, 1], 73, b"\x5e\xa1\xbb\x02", "header magic"),  # the public key's DynArray header
    ([2, 1], 73 + 3, b"\x09", "version"),
    ([2, 1], 73 + 5, b"\x02", "compression mode"),
    ([2, 1], 73 + 6, b"\x01", "reserved"),
    ([2, 1], 73 + 8, struct.pack("<Q", 1 << 40), "size"),
    ([2, 1], 73 + 16, struct.pack("<Q", 4095), "element count"),
    ([2, 1], 33, struct.pack("<Q", 3), "ciphertext"),  # ciphertext size 2 -> 3
    ([2, 1], 32, b"\x07", "NTT flag"),
    ([2, 4], 40, struct.pack("<Q", 2), "key"),  # relin keys: dim2 1 -> 2
    ([2, 4], 32, struct.pack("<Q", 1 << 60), "key-switching key count"),
    ([2, 4], 48 + 16 + 73, b"\x00\x00", "magic"),  # relin key's inner DynArray header
    ([2, 5], -1, b"\x5e\xa1\x10\x04\x04", "version"),  # first Galois key's header
    ([1], 17 + 8, struct.pack("<Q", 25), "modulus"),  # EncryptionParameters' first Modulus
    ([1], 9, struct.pack("<Q", 9), "modulus"),  # modulus count 2 -> 9
    ([1], 0, b"\x09", "scheme"),
    ([3, 1], 48, b"\x5e\xa1\x10\x04\x03\x01", "compression mode"),  # secret key DynArray
    ([3, 1], 32, struct.pack("<Q", 4097), "plaintext"),
]


@pytest.mark.parametrize("path,pos,new,msg", CONTEXT_MUTATIONS)
def test_mutated_nested_context_objects_are_refused(ckks: CKKSContext, path: list[int],
                                                    pos: int, new: bytes, msg: str) -> None:
    # a secret context carries no relin/Galois keys (TenSEAL makes them again from the secret key)
    _, _, blobs = _blob(ckks.serialize(include_secret_key=path[0] == 3, expose_secret=True))
    blob = _replace(blobs[0], path, lambda obj: _seal(_patch(_members(obj), pos, new)))
    with pytest.raises(SerializationError, match=msg):
        check_blob(blob, kind="context", what="ctx")


def test_unmodified_reencoding_passes(ckks: CKKSContext) -> None:
    """The helpers above change only what a mutation names."""
    for secret, paths in ((False, ([1], [2, 1], [2, 4], [2, 5])), (True, ([3, 1],))):
        _, _, blobs = _blob(ckks.serialize(include_secret_key=secret, expose_secret=True))
        for path in paths:
            for compr in (0, 1, 2):
                new = _replace(blobs[0], path, lambda obj, c=compr: _seal(_members(obj), compr=c))
                check_blob(new, kind="context", what="ctx")


@pytest.mark.parametrize("fields,msg", [
    ({"minor": 99}, "version"), ({"res": 1}, "reserved"), ({"compr": 7}, "compression mode"),
    ({"hs": 17}, "header size"), ({"size": 1 << 20}, "size"),
])
def test_mutated_outer_headers_are_refused(bfv: BFVContext, fields: dict, msg: str) -> None:
    env, header, blobs = _blob(bfv.encrypt([1, 2, 3]).serialize())
    blob = _replace(blobs[0], [2], lambda obj: _seal(_members(obj), **fields))
    with pytest.raises(SerializationError, match=msg):
        bfv.load_tensor(_rewrap(env, header, [blob]))


def test_tensor_mutations_go_through_the_loader(ckks: CKKSContext) -> None:
    env, header, blobs = _blob(ckks.encrypt([0.5] * 10).serialize())
    cases = [
        (lambda m: _seal(_patch(m, 41, struct.pack("<Q", 4096))), "ciphertext"),
        (lambda m: _seal(m + b"\0"), "unexpected bytes"),
        (lambda m: _seal(m)[:-3], "zstd|size"),
        (lambda m: _seal(m) + b"junk", "size"),
        (lambda m: _seal(m, size=16 + len(zstandard.ZstdCompressor().compress(m)) + 4)
         + b"junk", "decompress"),
    ]
    for fn, msg in cases:
        blob = _replace(blobs[0], [2], lambda obj, fn=fn: fn(_members(obj)))
        with pytest.raises(SerializationError, match=msg):
            ckks.load_tensor(_rewrap(env, header, [blob]))
    stray = blobs[0] + b"\x3a" + _enc_varint(len(blobs[0])) + blobs[0]  # SEAL object at field 7
    with pytest.raises(SerializationError, match="unexpected SEAL object"):
        check_blob(stray, kind="tensor", what="t")
    with pytest.raises(SerializationError, match="varint|overruns"):
        check_blob(blobs[0][:9], kind="tensor", what="t")


# -- decompression bombs ---------------------------------------------------------------------------


@pytest.mark.parametrize("compr", [1, 2])
def test_decompression_bomb_is_refused(ckks: CKKSContext, compr: int) -> None:
    env, header, blobs = _blob(ckks.encrypt([0.5] * 10).serialize())
    bomb = _seal(b"\0" * (64 << 20), compr=compr)
    assert len(bomb) < 100_000
    blob = _replace(blobs[0], [2], lambda obj: bomb)
    with pytest.raises(SerializationError, match="size limit"):
        ckks.load_tensor(_rewrap(env, header, [blob]))


def test_version_is_read_from_this_seal_build(ckks: CKKSContext) -> None:
    _, _, blobs = _blob(ckks.serialize())
    _, i = _varint(blobs[0], 0)
    _, i = _varint(blobs[0], i)
    assert HDR.unpack_from(blobs[0], i)[2:4] == seal_version()
