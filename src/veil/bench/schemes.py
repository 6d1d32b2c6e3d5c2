"""`veil bench schemes`: the same jobs under plaintext, CKKS, BFV, Paillier and MPC.

For each (scheme, op, size) a :class:`~veil.bench.report.Record` holds the time of the operation
on protected data (median and IQR over ``repeats``; encryption, key generation and process
start-up are excluded and reported separately in ``params``), the bytes that cross the wire
(HE: serialized input ciphertexts sent to the computing party plus the result sent back; MPC:
bytes sent by all parties during the operation), the max absolute error against the plaintext
answer and the security level of the parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from veil.bench import workloads as wl
from veil.bench.report import Record

SCHEMES = ("plain", "ckks", "bfv", "paillier", "mpc2", "mpc3")
# Paillier logistic regression costs 64 encryptions and 640 ciphertext-by-plaintext products per
# sample (~0.3 s each on a 2-core machine); it is measured on at most this many samples and the
# record says so (its `size` is the number of samples actually measured).
PAILLIER_LOGREG_MAX = 32

Progress = Callable[[str], None]


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _plain(loads: Sequence[wl.Workload], repeats: int, progress: Progress) -> list[Record]:
    out = []
    for w in loads:
        progress(f"plain {w.op} n={w.size}")
        times, _ = _timed(w.plain, repeats)
        out.append(Record("plain", w.op, w.size, times, w.x.nbytes, 0.0, None))
    return out


def _ckks(loads: Sequence[wl.Workload], repeats: int, progress: Progress) -> list[Record]:
    from veil import he
    from veil.he.lattice.ckks import linear_combination

    params = he.CKKSParams.default()
    t0 = time.perf_counter()
    ctx = he.CKKSContext.generate(params, galois_keys=True)  # sum/dot/vecmat rotate
    keygen_s = time.perf_counter() - t0
    server = he.CKKSContext.load(ctx.public().serialize())
    out = []
    for w in loads:
        progress(f"ckks {w.op} n={w.size}")
        t0 = time.perf_counter()
        if w.op == "logreg":
            inputs = [ctx.encrypt(w.x[:, j]) for j in range(w.x.shape[1])]
        else:
            inputs = [ctx.encrypt(w.x)] + ([ctx.encrypt(w.y)] if w.y is not None else [])
        enc_s = time.perf_counter() - t0
        sent = [server.load_tensor(t.serialize()) for t in inputs]
        fn = {
            "add": lambda s=sent: s[0] + s[1],
            "mul": lambda s=sent: s[0] * s[1],
            "sum": lambda s=sent: s[0].sum(),
            "mean": lambda s=sent, n=w.size: s[0].sum() * (1.0 / n),
            "dot": lambda s=sent, v=w.w: s[0].dot(v),
            # one dot product per column: log2(slots) rotations each, where TenSEAL's mm
            # (CKKSTensor.matmul) rotates once per row, i.e. n times
            "vecmat": lambda s=sent, m=w.W: [s[0].dot(m[:, k]) for k in range(m.shape[1])],
            "logreg": lambda s=sent, m=w.W, b=w.b: linear_combination(s, m, b),
        }[w.op]
        times, res = _timed(fn, repeats)
        results = res if isinstance(res, list) else [res]
        wire_out = [r.serialize() for r in results]
        nbytes = sum(len(t.serialize()) for t in inputs) + sum(len(b) for b in wire_out)
        got = [ctx.decrypt(ctx.load_tensor(b)) for b in wire_out]
        got_arr = np.stack(got, axis=-1) if isinstance(res, list) else got[0]
        out.append(Record("ckks", w.op, w.size, times, nbytes, wl.max_error(got_arr, w.plain()),
                          params.security_bits,
                          {"N": params.poly_modulus_degree, "scale_bits": params.scale_bits,
                           "encrypt_s": enc_s, "keygen_s": keygen_s}))
    return out


def _bfv(loads: Sequence[wl.Workload], repeats: int, progress: Progress) -> list[Record]:
    from veil import he

    params = he.BFVParams.default()
    ctx = he.BFVContext.generate(params)
    server = he.BFVContext.load(ctx.public().serialize())
    out = []
    for w in loads:
        if w.op not in wl.INTEGER_OPS:
            continue
        progress(f"bfv {w.op} n={w.size}")
        inputs = [ctx.encrypt(w.x)] + ([ctx.encrypt(w.y)] if w.y is not None else [])
        sent = [server.load_tensor(t.serialize()) for t in inputs]
        fn = {
            "add": lambda s=sent: s[0] + s[1],
            "mul": lambda s=sent: s[0] * s[1],
            "sum": lambda s=sent: s[0].sum(),
            "dot": lambda s=sent, v=w.w: s[0].dot(v),
        }[w.op]
        times, res = _timed(fn, repeats)
        nbytes = sum(len(t.serialize()) for t in [*inputs, res])
        got = ctx.decrypt(ctx.load_tensor(res.serialize()))
        out.append(Record("bfv", w.op, w.size, times, nbytes, wl.max_error(got, w.plain()),
                          params.security_bits,
                          {"N": params.poly_modulus_degree, "plain_modulus": params.plain_modulus}))
    return out


def _paillier(loads: Sequence[wl.Workload], repeats: int, progress: Progress,
              bits: int = 3072) -> list[Record]:
    from veil import he

    t0 = time.perf_counter()
    keys = he.PaillierKeyPair.generate(bits)
    keygen_s = time.perf_counter() - t0
    pk = keys.public_key
    security = {2048: 112, 3072: 128}.get(bits)
    out: list[Record] = []
    for w in loads:
        note = ""
        if w.op == "logreg" and any(r.op == "logreg" and r.size == PAILLIER_LOGREG_MAX
                                    for r in out) and w.size >= PAILLIER_LOGREG_MAX:
            continue  # the capped measurement is already in the table
        if w.op == "logreg" and w.size > PAILLIER_LOGREG_MAX:
            note = f"measured on {PAILLIER_LOGREG_MAX} of {w.size} samples"
            w = wl.Workload(w.op, PAILLIER_LOGREG_MAX, w.integer, w.x[:PAILLIER_LOGREG_MAX],
                            W=w.W, b=w.b)
        progress(f"paillier {w.op} n={w.size}")
        t0 = time.perf_counter()
        # the data owner holds the private key here, so it encrypts with the CRT fast path
        inputs = [keys.encrypt(w.x)]
        if w.op == "add":
            inputs.append(keys.encrypt(w.y))
        enc_s = time.perf_counter() - t0
        wire_in = [t.serialize() for t in inputs]
        sent = [he.PaillierVector.load(b, pk) for b in wire_in]
        fn = {
            "add": lambda s=sent: s[0] + s[1],
            "mul": lambda s=sent, v=w.y: s[0] * v,          # Paillier: ciphertext × plaintext
            "sum": lambda s=sent: s[0].sum(),
            "mean": lambda s=sent, n=w.size: s[0].sum() * (1.0 / n),
            "dot": lambda s=sent, v=w.w: s[0].dot(v),
            "vecmat": lambda s=sent, m=w.W: s[0] @ m,
            # one encrypted sample (row) at a time: x_i @ W^T + b
            "logreg": lambda s=sent, m=w.W, b=w.b: [s[0][i] @ m.T + b
                                                    for i in range(s[0].shape[0])],
        }[w.op]
        times, res = _timed(fn, repeats)
        results = res if isinstance(res, list) else [res]
        wire_out = [r.serialize() for r in results]   # re-randomized once, as sent back
        nbytes = sum(len(b) for b in wire_in + wire_out)
        got = [keys.decrypt(he.PaillierVector.load(b, pk)) for b in wire_out]
        got = np.stack(got) if isinstance(res, list) else got[0]
        note = "ciphertext × plaintext" if w.op == "mul" else note
        out.append(Record("paillier", w.op, w.size, times, nbytes,
                          wl.max_error(got, w.plain()), security,
                          {"bits": bits, "encrypt_s": enc_s, "keygen_s": keygen_s}, note))
    return out


def _mpc_job(party: Any, loads: Sequence[wl.Workload], repeats: int) -> list[dict[str, Any]]:
    """Runs in every party: rank 0 holds x, rank 1 holds y / w / W (and b)."""
    import torch

    from veil.mpc import accounting

    def shared(value: Any, src: int) -> Any:
        t = None if party.rank != src else torch.as_tensor(np.asarray(value, dtype=np.float64))
        return party.share(t, src=src, shape=np.shape(value))

    rows = []
    for w in loads:
        x = shared(w.x, 0)
        second = {"add": w.y, "mul": w.y, "dot": w.w, "vecmat": w.W, "logreg": w.W}.get(w.op)
        y = shared(second, 1) if second is not None else None
        fn = {
            "add": lambda x=x, y=y: x + y,
            "mul": lambda x=x, y=y: x * y,
            "sum": lambda x=x: x.sum(),
            "mean": lambda x=x: x.mean(),
            "dot": lambda x=x, y=y: x.dot(y),
            "vecmat": lambda x=x, y=y: x.matmul(y),
            "logreg": lambda x=x, y=y, b=w.b: x.matmul(y.t()) + torch.as_tensor(b),
        }[w.op]
        fn()  # warm-up (first use allocates)
        before = accounting.stats()["bytes_sent"]
        times, res = _timed(fn, repeats)
        sent = (accounting.stats()["bytes_sent"] - before) // repeats
        got = party.reveal(res, to=[0])
        rows.append({"op": w.op, "size": w.size, "times": times, "bytes_sent": sent,
                     "result": None if got is None else got.double().numpy()})
    return rows


def _mpc(loads: Sequence[wl.Workload], repeats: int, progress: Progress,
         parties: int) -> list[Record]:
    from veil import mpc

    progress(f"mpc{parties}: {len(loads)} jobs in one {parties}-party session")
    t0 = time.perf_counter()
    results = mpc.run(_mpc_job, parties=parties, args=(list(loads), repeats), timeout=600)
    session_s = time.perf_counter() - t0
    out = []
    for i, w in enumerate(loads):
        row0 = results[0][i]
        nbytes = sum(results[r][i]["bytes_sent"] for r in range(parties))
        out.append(Record(f"mpc{parties}", w.op, w.size, row0["times"], nbytes,
                          wl.max_error(row0["result"], w.plain()), None,
                          {"parties": parties, "provider": "dealer", "precision_bits": 16,
                           "session_s": session_s},
                          "semi-honest, dealer-assisted"))
    return out


def run_schemes(ops: Iterable[str], sizes: Iterable[int], schemes: Iterable[str] = SCHEMES, *,
                repeats: int = 3, progress: Progress | None = None) -> list[Record]:
    """Run every op at every size under every scheme; returns the records."""
    from veil.errors import ConfigurationError

    ops, sizes, schemes = list(ops), [int(s) for s in sizes], list(schemes)
    for name, values, allowed in (("op", ops, wl.OPS), ("scheme", schemes, SCHEMES)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ConfigurationError(
                f"unknown {name}(s) {bad or values}; choose from {', '.join(allowed)}")
    if not sizes or min(sizes) < 1 or max(sizes) > 10**7:
        raise ConfigurationError(f"sizes must be between 1 and 1e7, got {sizes}")
    if repeats < 1 or repeats > 100:
        raise ConfigurationError(f"repeats must be 1..100, got {repeats}")
    progress = progress or (lambda _msg: None)
    floats = [wl.make(op, n) for op in ops for n in sizes]
    ints = [wl.make(op, n, integer=True) for op in ops if op in wl.INTEGER_OPS for n in sizes]
    records: list[Record] = []
    for scheme in schemes:
        if scheme == "plain":
            records += _plain(floats, repeats, progress)
        elif scheme == "ckks":
            records += _ckks(floats, repeats, progress)
        elif scheme == "bfv":
            records += _bfv(ints, repeats, progress)
        elif scheme == "paillier":
            records += _paillier(floats, repeats, progress)
        else:
            records += _mpc(floats, repeats, progress, parties=int(scheme[-1]))
    return records
