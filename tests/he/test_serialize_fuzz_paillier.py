"""Malformed payloads for every Paillier deserializer end in SerializationError, fast.

The fuzzing runs in a subprocess (this file run as a script), so a crash or hang in a parser
cannot take the test session with it. For each of the four loaders it feeds >= 2,000 payloads:
truncations, bit flips, wrong kind, wrong params hash, re-enveloped garbage bodies, re-enveloped
truncated / padded bodies, broken structural fields and invalid numbers (ciphertexts out of range
or sharing a factor with n; moduli that are even, square, prime or with small factors; factors that
are not prime) with a correct envelope. Every payload must raise SerializationError (nothing else,
and no success) within 1 s.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable

PER_LOADER = 2100


def _mutations(
    payload: bytes, kind: str, params: bytes, rng: random.Random, extra: list[bytes]
) -> list[bytes]:
    from veil.he.serialize import pack, unpack

    body = unpack(payload, kind=kind).body
    kinds = ["paillier.public_key", "paillier.private_key", "paillier.vector", "paillier.packed"]
    out: list[bytes] = list(extra)
    makers: list[Callable[[], bytes]] = [
        lambda: payload[: rng.randrange(len(payload))],
        lambda: _flip(payload, rng, rng.randint(1, 3)),
        lambda: pack(rng.choice([k for k in kinds if k != kind] + ["ckks.vector"]), body,
                     params_hash=params),
        lambda: pack(kind, body, params_hash=rng.randbytes(32)),
        lambda: pack(kind, rng.randbytes(rng.randrange(0, 3 * len(body) + 8)), params_hash=params),
        lambda: pack(kind, body[: rng.randrange(len(body))], params_hash=params),
        lambda: pack(kind, body + rng.randbytes(rng.randint(1, 64)), params_hash=params),
        lambda: pack(kind, bytes([rng.choice([0, 2, 255])]) + body[1:], params_hash=params),
        lambda: payload + rng.randbytes(rng.randint(1, 64)),
        lambda: rng.randbytes(rng.randrange(0, 200)),
    ]
    while len(out) < PER_LOADER:
        out.append(rng.choice(makers)())
    return out


def _flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    b = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def _structured(kp, rng: random.Random) -> dict[str, list[bytes]]:
    """Payloads with a correct envelope whose body is well-formed but semantically invalid."""
    from gmpy2 import mpz

    from veil.he.paillier import wire
    from veil.he.serialize import pack

    pk = kp.public_key
    p, q = int(kp.private_key._crt.p), int(kp.private_key._crt.q)
    n = pk.n
    pub, priv, vec, packed = [], [], [], []
    for bad_n in (n * 2, p * p, q, 3 * n, 12345, 1, n * n, 2**1100 + 1):
        w = wire.Writer()
        w.u8(1), w.bigint(bad_n)
        pub.append(pack(wire.KIND_PUBLIC, w.bytes(), params_hash=wire.key_hash(bad_n)))
    for bp, bq in ((p, p), (p * q, 1), (p + 2, q), (p, q * 3), (4, q), (p, q + 2)):
        w = wire.Writer()
        w.u8(1), w.bigint(bp), w.bigint(bq)
        priv.append(pack(wire.KIND_PRIVATE, w.bytes(), params_hash=wire.key_hash(bp * bq)))
    good = int(pk.encrypt([1])._c.ravel()[0])
    bad_cts = [0, n * n, n * n + 1, p * rng.randrange(1, q), q, 2 ** (8 * pk._width) - 1]
    for c in bad_cts:
        w = wire.Writer()
        w.u8(1), w.u8(0), w.u16(0), w.u16(0), w.f64(10.0), w.bigint(10), w.shape((2,))
        w.ciphertexts([mpz(good), mpz(c)], pk._width)
        vec.append(pack(wire.KIND_VECTOR, w.bytes(), params_hash=pk._hash))
        w = wire.Writer()
        w.u8(1), w.u8(0), w.u16(0), w.f64(10.0), w.u64(4), w.u64(1), w.shape((2,))
        w.ciphertexts([mpz(c)], pk._width)
        packed.append(pack(wire.KIND_PACKED, w.bytes(), params_hash=pk._hash))
    for fields in ((7, 0, 0, 10.0, 10), (0, 9000, 0, 10.0, 10), (0, 0, 0, float("nan"), 10),
                   (0, 0, 2000, 10.0, 10), (0, 0, 0, -1.0, 10), (0, 0, 0, 10.0, n)):
        flags, scale, prec, max_abs, bound = fields
        w = wire.Writer()
        w.u8(1), w.u8(flags), w.u16(scale), w.u16(prec), w.f64(max_abs), w.bigint(bound)
        w.shape((1,)), w.ciphertexts([mpz(good)], pk._width)
        vec.append(pack(wire.KIND_VECTOR, w.bytes(), params_hash=pk._hash))
    for shape in ((2**40,), (3,), (1,) * 40, (2**32, 2**32)):
        w = wire.Writer()
        w.u8(1), w.u8(0), w.u16(0), w.u16(0), w.f64(10.0), w.bigint(10)
        w.u8(len(shape))
        for d in shape:
            w.u64(d)
        w.ciphertexts([mpz(good)], pk._width)
        vec.append(pack(wire.KIND_VECTOR, w.bytes(), params_hash=pk._hash))
    for prec, max_abs, max_add, addends in ((0, 10.0, 4, 0), (0, 10.0, 4, 5), (0, 10.0, 0, 0),
                                            (1020, 10.0, 4, 1), (0, float("inf"), 4, 1)):
        w = wire.Writer()
        w.u8(1), w.u8(0), w.u16(prec), w.f64(max_abs), w.u64(max_add), w.u64(addends)
        w.shape((1,)), w.ciphertexts([mpz(good)], pk._width)
        packed.append(pack(wire.KIND_PACKED, w.bytes(), params_hash=pk._hash))
    return {"public": pub, "private": priv, "vector": vec, "packed": packed}


def main() -> None:
    from veil.errors import SerializationError
    from veil.he.paillier import (
        PackedPaillierVector,
        PaillierKeyPair,
        PaillierPrivateKey,
        PaillierPublicKey,
        PaillierVector,
    )

    rng = random.Random(20261122)
    kp = PaillierKeyPair.generate(1024, allow_insecure=True)
    pk = kp.public_key
    structured = _structured(kp, rng)
    cases = {
        "public": (
            pk.serialize(),
            "paillier.public_key",
            lambda d: PaillierPublicKey.load(d, allow_insecure=True),
        ),
        "private": (
            kp.private_key.serialize(expose_secret=True),
            "paillier.private_key",
            lambda d: PaillierPrivateKey.load(d, allow_insecure=True),
        ),
        "vector": (
            pk.encrypt([[1.5, -2.0], [3.0, 4.0]], precision_bits=8).serialize(),
            "paillier.vector",
            lambda d: PaillierVector.load(d, pk),
        ),
        "packed": (
            pk.encrypt_packed(list(range(50)), precision_bits=4, max_addends=8).serialize(),
            "paillier.packed",
            lambda d: PackedPaillierVector.load(d, pk),
        ),
    }
    report = {}
    for name, (payload, kind, load) in cases.items():
        load(payload)  # the unmodified payload loads
        payloads = _mutations(payload, kind, pk._hash, rng, structured[name])
        wrong, slowest = [], 0.0
        for i, data in enumerate(payloads):
            t0 = time.perf_counter()
            try:
                load(data)
                outcome = "loaded"
            except SerializationError:
                outcome = None
            except Exception as exc:  # any other type is a failure
                outcome = f"{type(exc).__name__}: {exc}"
            slowest = max(slowest, time.perf_counter() - t0)
            if outcome is not None and data != payload:
                wrong.append((i, outcome))
        report[name] = {"count": len(payloads), "wrong": wrong[:5], "slowest": slowest}
    print(json.dumps(report))


def test_every_malformed_payload_raises_serialization_error() -> None:
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"public", "private", "vector", "packed"}
    for name, r in report.items():
        assert r["count"] >= 2000, (name, r)
        assert r["wrong"] == [], (name, r)
        assert r["slowest"] < 1.0, (name, r)


if __name__ == "__main__":
    main()
