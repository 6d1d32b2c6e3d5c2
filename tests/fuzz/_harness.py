"""Structure-aware fuzzing of every loader that takes bytes from another party.

Run as a script (``python tests/fuzz/_harness.py SEED PER_LOADER [NAME ...]``) so that a crash
or a hang in a parser kills this process, not pytest. It prints one ``REPORT {json}`` line:
per loader, how many payloads were rejected with a Veil error, how many were accepted (and then
used without a non-Veil error), and every *escape* (any other exception) with its mutation.

Mutations know the formats: Veil envelopes (re-packed with a valid digest, so the layer below
sees the damage), framed bodies (``u32 header_len | JSON | u32 count | (u64 len | blob)*``,
used by contexts, tensors and inference messages), JSON headers edited as *text* (nesting up to
50,000 deep, integers of thousands of digits, NaN/1e999, wrong kinds, missing, duplicate and
unknown keys, truncation, bit flips), nested envelopes (the tensors inside an inference message),
and plain byte-level damage (truncation, bit flips, insertions, wrong kinds and parameters).
"""

from __future__ import annotations

import json
import random
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
DEEP = (17, 33, 1000, 50_000)


def _deep(rng: random.Random) -> str:
    d = rng.choice(DEEP)
    if rng.random() < 0.5:
        return "[" * d + "]" * d
    return '{"a":' * d + "1" + "}" * d


def snippet(rng: random.Random) -> str:
    """A JSON value as text: hostile (deep, huge, non-finite) or of a wrong kind."""
    k = rng.randrange(4)
    if k == 0:
        return _deep(rng)
    if k == 1:
        n = rng.choice((41, 400, 4301, 20_000))
        return rng.choice(("", "-")) + "9" * n
    if k == 2:
        return rng.choice(("1e999", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 500 + ".5",
                           "1e-400", "0.1e99999"))
    return rng.choice(('"x"', "null", "true", "false", "[]", "{}", "1.5", "-1", "0",
                       "[1,-2]", "[0]", "[1099511627776]", '"' + "0" * 32 + '"',
                       '{"scheme":"ckks"}', "[[1]]", '"\\ud800"', "18446744073709551617"))


def flip(data: bytes, rng: random.Random, bits: int = 0) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(bits or rng.randint(1, 6)):
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def mutate_bytes(b: bytes, rng: random.Random) -> bytes:
    k = rng.randrange(6)
    if k == 0 and len(b) > 1:
        return b[: rng.randrange(len(b))]
    if k == 1:
        return flip(b, rng)
    if k == 2 and b:  # overwrite a run, biased towards the start (headers and lengths)
        out = bytearray(b)
        i = rng.randrange(min(len(out), 64))
        for j in range(i, min(len(out), i + rng.randrange(1, 12))):
            out[j] = rng.choice((0, 0xFF, rng.randrange(256)))
        return bytes(out)
    if k == 3 and b:
        i = rng.randrange(len(b))
        if rng.random() < 0.5:
            return b[:i] + rng.randbytes(rng.randrange(1, 16)) + b[i:]
        return b[:i] + b[i + rng.randrange(1, 64):]
    if k == 4:
        return b + rng.randbytes(rng.randrange(1, 64))
    return rng.randbytes(rng.randrange(0, 300))


# -- JSON header text ----------------------------------------------------------------------


def mutate_json_text(text: str, rng: random.Random) -> str:
    """Edit a JSON document as text, keeping the rest of it intact."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    k = rng.randrange(10)
    if isinstance(doc, dict) and doc and k < 7:
        items = [(key, json.dumps(v, sort_keys=True)) for key, v in sorted(doc.items())]
        i = rng.randrange(len(items))
        key, val = items[i]
        if k <= 2:  # replace one value
            items[i] = (key, snippet(rng))
        elif k == 3:  # replace a value inside a nested object / list
            inner = doc[key]
            if isinstance(inner, dict) and inner:
                sub = rng.choice(sorted(inner))
                items[i] = (key, mutate_json_text(json.dumps(inner), rng) if rng.random() < .3
                            else json.dumps({**inner, sub: None})[:-1].replace(
                                f'"{sub}": null', f'"{sub}": {snippet(rng)}') + "}")
            elif isinstance(inner, list) and inner:
                j = rng.randrange(len(inner))
                parts = [json.dumps(x) for x in inner]
                parts[j] = snippet(rng)
                items[i] = (key, "[" + ",".join(parts) + "]")
            else:
                items[i] = (key, snippet(rng))
        elif k == 4:
            del items[i]
        elif k == 5:
            items.append((key, snippet(rng)))  # duplicate key
        else:
            items.append((rng.choice(("zz", "extra", "__proto__")), snippet(rng)))
        return "{" + ",".join(f"{json.dumps(a)}:{b}" for a, b in items) + "}"
    if k == 7:
        return snippet(rng)  # not an object at all
    if k == 8 and text:
        return text[: rng.randrange(len(text))]
    raw = flip(text.encode(), rng)
    return raw.decode("utf-8", "replace") if rng.random() < 0.5 else raw.decode("latin-1")


# -- framed bodies (contexts, tensors, inference messages) ---------------------------------


def unframe(body: bytes) -> tuple[bytes, list[bytes]]:
    (hlen,) = U32.unpack_from(body, 0)
    head = body[4: 4 + hlen]
    pos = 4 + hlen
    (count,) = U32.unpack_from(body, pos)
    pos += 4
    blobs = []
    for _ in range(count):
        (n,) = U64.unpack_from(body, pos)
        blobs.append(body[pos + 8: pos + 8 + n])
        pos += 8 + n
    return head, blobs


def frame(head: bytes, blobs: list[bytes], *, count: int | None = None,
          lengths: list[int] | None = None) -> bytes:
    parts = [U32.pack(len(head)), head, U32.pack(len(blobs) if count is None else count)]
    for i, b in enumerate(blobs):
        parts += [U64.pack(len(b) if lengths is None else lengths[i]), b]
    return b"".join(parts)


def mutate_framed(body: bytes, rng: random.Random,
                  inner: Callable[[bytes, random.Random], bytes] | None = None) -> bytes:
    head, blobs = unframe(body)
    k = rng.randrange(10)
    if k < 5:
        text = mutate_json_text(head.decode(), rng)
        return frame(text.encode("utf-8", "surrogatepass"), blobs)
    if k == 5 and blobs:  # lengths and counts that lie
        lengths = [len(b) for b in blobs]
        j = rng.randrange(len(lengths))
        lengths[j] = rng.choice((0, lengths[j] + 1, max(0, lengths[j] - 1), 2**63, 2**64 - 1))
        return frame(head, blobs, lengths=lengths)
    if k == 6:
        return frame(head, blobs, count=rng.choice((0, len(blobs) + 1, 2**32 - 1, 65_537)))
    if k == 7:  # drop / duplicate / garble a blob
        if blobs and rng.random() < 0.4:
            return frame(head, blobs[:-1])
        if blobs and rng.random() < 0.5:
            return frame(head, blobs + blobs[:1])
    if blobs:
        j = rng.randrange(len(blobs))
        new = list(blobs)
        new[j] = inner(blobs[j], rng) if inner is not None else mutate_bytes(blobs[j], rng)
        return frame(head, new)
    return mutate_bytes(body, rng)


# -- envelopes -----------------------------------------------------------------------------

KINDS = ("ckks.context.public", "ckks.context.secret", "ckks.tensor", "bfv.context.public",
         "bfv.context.secret", "bfv.tensor", "paillier.public_key", "paillier.private_key",
         "paillier.vector", "paillier.packed", "models.encrypted", "models.plan",
         "veil.secagg.advertise", "veil.secagg.roster")


def mutate_envelope(data: bytes, rng: random.Random, body_mutator: Callable[..., bytes]) -> bytes:
    from veil.he import serialize as env

    e = env.unpack(data, kind=data[6: 6 + data[5]].decode())
    k = rng.randrange(12)
    if k == 0:
        return data[: rng.randrange(len(data))]
    if k == 1:
        return flip(data, rng)
    if k == 2:
        return env.pack(rng.choice([x for x in KINDS if x != e.kind]), e.body,
                        params_hash=e.params_hash)
    if k == 3:
        return env.pack(e.kind, e.body, params_hash=rng.randbytes(32))
    if k == 4:  # declared body length lies (digest recomputed)
        import hashlib

        head = bytearray(data[: 6 + data[5] + 32 + 8])
        struct.pack_into(">Q", head, len(head) - 8,
                         rng.choice((0, len(e.body) + 1, 2**64 - 1, len(e.body) // 2)))
        out = bytes(head) + e.body
        return out + hashlib.sha256(out).digest()
    if k == 5:
        return env.pack(e.kind, mutate_bytes(e.body, rng), params_hash=e.params_hash)
    return env.pack(e.kind, body_mutator(e.body, rng), params_hash=e.params_hash)


# -- loaders -------------------------------------------------------------------------------

Loader = tuple[bytes, Callable[[bytes], Any], Callable[[bytes, random.Random], bytes]]


def loaders() -> dict[str, Loader]:
    """name -> (a valid payload, load(bytes) doing everything the receiver does, mutate)."""
    import torch

    from veil.he import serialize as env
    from veil.he.lattice.bfv import BFVContext
    from veil.he.lattice.ckks import CKKSContext
    from veil.he.paillier import (
        PackedPaillierVector,
        PaillierKeyPair,
        PaillierPrivateKey,
        PaillierPublicKey,
        PaillierVector,
    )
    from veil.he.params import BFVParams, CKKSParams, batching_prime
    from veil.models.ckks.infer import EncryptedValues
    from veil.models.mpc_infer import program_from_json
    from veil.mpc._crypten import messages as mpc_messages
    from veil.protocols import inference, shamir

    ckks = CKKSContext.generate(CKKSParams(2048, (27, 27), 20), galois_keys=False)
    bfv = BFVContext.generate(BFVParams(2048, batching_prime(16, 2048), (27, 27)),
                              galois_keys=False)
    kp = PaillierKeyPair.generate(1024, allow_insecure=True)
    pk = kp.public_key

    def enveloped(inner: Callable[..., bytes] | None = None) -> Callable[..., bytes]:
        def body_mut(b: bytes, r: random.Random) -> bytes:
            return mutate_framed(b, r, inner)

        return lambda data, r: mutate_envelope(data, r, body_mut)

    def binary(data: bytes, r: random.Random) -> bytes:
        return mutate_envelope(data, r, mutate_bytes)

    def tensor_inner(blob: bytes, r: random.Random) -> bytes:
        try:
            return enveloped()(blob, r)
        except Exception:  # not an envelope: damage it as bytes
            return mutate_bytes(blob, r)

    def json_text(data: bytes, r: random.Random) -> bytes:
        return mutate_json_text(data.decode(), r).encode("utf-8", "surrogatepass")

    def mpc_mut(data: bytes, r: random.Random) -> bytes:
        if r.random() < 0.2:
            return mutate_bytes(data, r)
        return data[:4] + json_text(data[4:], r)

    def both(load: Callable[[bytes], Any], use: Callable[[Any], Any]) -> Callable[[bytes], Any]:
        return lambda d: use(load(d))

    ct = ckks.encrypt([i / 100 for i in range(1500)])
    bt = bfv.encrypt(list(range(1500)))
    ev = EncryptedValues("batched", 3, [ckks.encrypt([0.5, 1.0, -1.0]) for _ in range(2)])
    from veil.models.ir import Op, Program
    from veil.models.mpc_infer import program_to_json

    prog = Program("x", (1, 4), [Op("fc", "linear", ("x",), (1, 2), {"bias": True}, None,
                                    {"weight": (2, 4), "bias": (2,)}, 0, "fc")], "fc")
    ppriv = kp.private_key.serialize(expose_secret=True)
    return {
        "envelope": (env.pack("models.plan", b"{}"), lambda d: env.unpack(d, kind="models.plan"),
                     binary),
        "load_json": (json.dumps({"a": [1, {"b": 2.5}], "c": "x"}).encode(),
                      lambda d: env.load_json(d, what="fuzz", max_bytes=1 << 20), json_text),
        "ckks.context": (ckks.public().serialize(), CKKSContext.load, enveloped()),
        "ckks.context.secret": (ckks.serialize(include_secret_key=True, expose_secret=True),
                                CKKSContext.load, enveloped()),
        "ckks.tensor": (ct.serialize(), both(ckks.load_tensor, ckks.decrypt), enveloped()),
        "bfv.context": (bfv.public().serialize(), BFVContext.load, enveloped()),
        "bfv.tensor": (bt.serialize(), both(bfv.load_tensor, bfv.decrypt), enveloped()),
        "paillier.public_key": (pk.serialize(),
                                lambda d: PaillierPublicKey.load(d, allow_insecure=True), binary),
        "paillier.private_key": (ppriv,
                                 lambda d: PaillierPrivateKey.load(d, allow_insecure=True),
                                 binary),
        "paillier.vector": (pk.encrypt([[1.5, -2.0], [3.0, 4.0]], precision_bits=8).serialize(),
                            both(lambda d: PaillierVector.load(d, pk), kp.decrypt), binary),
        "paillier.packed": (pk.encrypt_packed(list(range(20)), precision_bits=4,
                                              max_addends=8).serialize(),
                            lambda d: PackedPaillierVector.load(d, pk), binary),
        "models.encrypted.frames": (
            ev.serialize(), lambda d: inference.unpack_frames(d, inference.KIND_ENCRYPTED),
            enveloped(tensor_inner)),
        "models.encrypted": (ev.serialize(),
                             both(lambda d: EncryptedValues.load(ckks, d),
                                  lambda v: [ckks.decrypt(t) for t in v.tensors]),
                             enveloped(tensor_inner)),
        "models.architecture": (program_to_json(prog), program_from_json, json_text),
        "models.plan": (inference.PublicPlan(
            "single", (1, 8, 8), 10, 3, ckks.params.describe(), True,
            {"kind": "im2col", "kernel_size": [3, 3], "stride": 1, "padding": [1, 1]},
            (("im2col", "conv", 64, 256, 1),)).serialize(), inference.PublicPlan.load,
            enveloped()),
        "mpc.message": (mpc_messages.encode({"function": "additive", "device": None,
                                             "args": (torch.Size([2, 3]), torch.Size([3, 2]),
                                                      "matmul"), "kwargs": {}}),
                        both(mpc_messages.decode, _dealer_check(mpc_messages)), mpc_mut),
        "shamir.share": (shamir.share_to_bytes(12345), shamir.share_from_bytes,
                         mutate_bytes),
        **{name: (good, load, binary) for name, (good, load) in _secagg_messages().items()},
    }


def _secagg_messages() -> dict[str, tuple[bytes, Callable[[bytes], Any]]]:
    """One message of every secure-aggregation kind, from an honest 3-client round, with the
    parser its receiver runs (clients parse the server's messages, the server the clients')."""
    import numpy as np

    from veil.protocols.prg import ring_dtype
    from veil.protocols.secagg import (
        SecAggClient,
        SecAggConfig,
        SecAggServer,
        generate_identities,
    )
    from veil.protocols.secagg import messages as m

    cfg = SecAggConfig(3, 4, 1.0)
    server = SecAggServer(cfg)
    keys, directory = generate_identities(range(3))
    cl = [SecAggClient(c, cfg, round_id=server.round_id, server_public_key=server.public_key,
                       identity_key=keys[c], directory=directory) for c in range(3)]

    def round_trip(msgs: list[bytes], receive: str, close: str) -> tuple[list[bytes], Any]:
        for msg in msgs:
            getattr(server, receive)(msg)
        return msgs, getattr(server, close)()

    adv, roster = round_trip([c.advertise() for c in cl], "receive_advertise", "close_advertise")
    shares, delivery = round_trip([c.share_keys(roster) for c in cl], "receive_shares",
                                  "close_shares")
    masked, survivors = round_trip(
        [c.masked_input(np.full(4, 0.25), delivery[i]) for i, c in enumerate(cl)],
        "receive_masked", "close_masked")
    sigs, request = round_trip([c.consistency(survivors) for c in cl], "receive_consistency",
                               "close_consistency")
    unmask = cl[0].unmask(request)
    ph, mb = cfg.params_hash, cfg.max_message_bytes()

    def parse(cls: Any, **kw: Any) -> Callable[[bytes], Any]:
        return lambda d: cls.from_bytes(d, params_hash=ph, **kw)

    return {
        "secagg.advertise": (adv[0], parse(m.AdvertiseKeys)),
        "secagg.roster": (roster, parse(m.Roster, max_bytes=mb)),
        "secagg.share_keys": (shares[0], parse(m.ShareKeys, max_bytes=mb)),
        "secagg.delivery": (delivery[0], parse(m.ShareDelivery, max_bytes=mb)),
        "secagg.masked": (masked[0], parse(m.MaskedInput, max_bytes=mb, length=cfg.masked_length,
                                            dtype=ring_dtype(cfg.ring_bits))),
        "secagg.survivors": (survivors, parse(m.SurvivorList, max_bytes=mb)),
        "secagg.consistency": (sigs[0], parse(m.ConsistencySignature)),
        "secagg.unmask_request": (request, parse(m.UnmaskRequest, max_bytes=mb)),
        "secagg.unmask": (unmask, parse(m.UnmaskShares, max_bytes=mb)),
    }


def _dealer_check(mod: Any) -> Callable[[Any], Any]:
    def check(obj: Any) -> Any:
        return mod.check_dealer_request(obj) if isinstance(obj, dict) else obj
    return check


def cases(good: bytes, mutate: Callable[[bytes, random.Random], bytes], rng: random.Random,
          n: int) -> Iterator[bytes]:
    for _ in range(n):
        yield mutate(good, rng)


def run(seed: int, per_loader: int, names: list[str]) -> dict[str, Any]:
    from veil.errors import VeilError

    table = loaders()
    report: dict[str, Any] = {}
    for name in names or sorted(table):
        good, load, mutate = table[name]
        load(good)  # the unmodified payload loads: the fixtures are right
        rng = random.Random(f"{seed}/{name}")
        stats: dict[str, Any] = {"rejected": 0, "accepted": 0, "escapes": [], "slowest_s": 0.0}
        for data in cases(good, mutate, rng, per_loader):
            t0 = time.perf_counter()
            try:
                load(data)
                stats["accepted"] += 1
            except VeilError:
                stats["rejected"] += 1
            except Exception as exc:  # an escape: the defect this harness looks for
                stats["escapes"].append(f"{type(exc).__name__}: {str(exc)[:160]} "
                                        f"[{data[:48]!r}]")
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t0)
        stats["escape_count"] = len(stats["escapes"])
        stats["escapes"] = stats["escapes"][:10]
        report[name] = stats
    return report


if __name__ == "__main__":
    sys.setrecursionlimit(1000)  # CPython's default, whatever the caller set
    out = run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
    print("REPORT " + json.dumps(out))
