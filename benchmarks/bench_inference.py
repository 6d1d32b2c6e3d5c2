"""Encrypted inference benchmarks: Veil vs the raw TenSEAL tutorial approach, MPC vs plaintext.

1. CKKS digits logistic regression, **batched** layout (one ciphertext per feature, 4096 samples
   per ciphertext, N=8192, 128-bit) against the TenSEAL tutorial approach measured in the same
   run: one ``ts.ckks_vector(ctx, x).mm(W) + b`` per sample (N=8192, Galois keys). Reported:
   per-sample time of each (server only and end to end, i.e. with client encryption and
   decryption), the ratio, and the argmax agreement of both with plaintext.
2. CKKS small CNN, **single-sample** latency and max logit error vs plaintext, side by side:
   ``digits-cnn-fast`` in the taps layout (``veil.models.ckks.lanes``: N=8192, no row
   rotations) and ``digits-cnn-poly`` in the generic single layout (im2col first conv, dense
   second conv through TenSEAL's row-rotating ``mm``). ``taps_accuracy`` runs the fast CNN on
   the whole test set.
3. MPC (2 parties + dealer, one session) ``digits-mlp`` and ``digits-cnn`` on a batch of the
   digits test set: time and bytes sent per sample, vs plaintext torch on the same batch.

Run ``python benchmarks/bench_inference.py`` (prints a table) or
``python -m pytest benchmarks/bench_inference.py --benchmark-only -s``.
Only this module imports tenseal outside ``veil.he``, for the baseline.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("VEIL_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "veil"))

BASELINE_SAMPLES = int(os.environ.get("VEIL_BENCH_BASELINE_SAMPLES", "8"))
BATCH = 4096
MPC_BATCH = 100


def _tenseal_tutorial(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    wt, bl = w.T.tolist(), b.tolist()
    out = []
    t0 = time.perf_counter()
    for row in x:
        enc = ts.ckks_vector(ctx, row.tolist())
        res = enc.mm(wt) + bl
        out.append(res.decrypt())
    return (time.perf_counter() - t0) / len(x), np.array(out)


def _round_trip(ctx: Any, compiled: Any, plan: Any, x: Any) -> tuple[Any, Any, Any, tuple]:
    """Client encrypt, server evaluate, client decrypt: (logits, request, response, seconds)."""
    from veil import models

    t0 = time.perf_counter()
    enc = models.encrypt_input(ctx, x, plan)
    t1 = time.perf_counter()
    out = compiled(enc)
    t2 = time.perf_counter()
    y = models.decrypt_output(ctx, out)
    t3 = time.perf_counter()
    return y, enc, out, (t1 - t0, t2 - t1, t3 - t2)


def bench_logreg() -> dict[str, Any]:
    from veil import he, models
    from veil.models import zoo

    entry = zoo.load("digits-logreg")
    lin = entry.model[0]
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    reps = -(-BATCH // len(entry.x_test))
    x = entry.x_test.repeat(reps, 1)[:BATCH]
    want = entry.model(x).detach().numpy()
    base_t, base_y = _tenseal_tutorial(w, b, x[:BASELINE_SAMPLES].double().numpy())
    plan = models.plan(entry.model, (64,))
    ctx = he.CKKSContext.generate(plan.params, galois_keys=False)
    compiled = models.compile(entry.model, ctx.public(), plan)
    y, _, _, (t_enc, t_srv, t_dec) = _round_trip(ctx, compiled, plan, x)
    server, total = t_srv / BATCH, (t_enc + t_srv + t_dec) / BATCH
    return {
        "tenseal_ms_per_sample": base_t * 1e3,
        "veil_server_ms_per_sample": server * 1e3,
        "veil_end_to_end_ms_per_sample": total * 1e3,
        "ratio_server": base_t / server,
        "ratio_end_to_end": base_t / total,
        "veil_agreement": float((y.argmax(1) == want.argmax(1)).mean()),
        "tenseal_agreement": float((base_y.argmax(1) ==
                                    want[:BASELINE_SAMPLES].argmax(1)).mean()),
        "veil_max_logit_error": float(np.abs(y - want).max()),
        "params": plan.params.describe(),
    }


CNN_SAMPLES = int(os.environ.get("VEIL_BENCH_CNN_SAMPLES", "5"))
GENERIC_SAMPLES = int(os.environ.get("VEIL_BENCH_GENERIC_SAMPLES", "2"))


def _single(name: str, samples: int) -> dict[str, Any]:
    """Single-sample CKKS latency of zoo model ``name``: client encrypt, server, client decrypt."""
    from veil import he, models
    from veil.models import zoo

    entry = zoo.load(name)
    plan = models.plan(entry.model, (1, 8, 8), layout="single")
    ctx = he.CKKSContext.generate(plan.params, galois_keys=True)
    compiled = models.compile(entry.model, ctx.public(), plan)
    parts, errs, agree, req, resp = [], [], 0, 0, 0
    for i in range(samples):
        x = entry.x_test[i]
        y, enc, out, times = _round_trip(ctx, compiled, plan, x)
        parts.append(times)
        want = entry.model(x[None]).detach().numpy()
        errs.append(float(np.abs(y - want).max()))
        agree += int(y.argmax() == want.argmax())
        req, resp = len(enc.serialize()), len(out.serialize())
    p = np.array(parts)
    return {"layout": plan.input_encoding["kind"], "latency_s_median": float(np.median(p.sum(1))),
            "encrypt_s": float(np.median(p[:, 0])), "server_s": float(np.median(p[:, 1])),
            "decrypt_s": float(np.median(p[:, 2])), "max_logit_error": max(errs),
            "argmax_agreement": agree / samples, "request_bytes": req, "response_bytes": resp,
            "plaintext_accuracy": entry.accuracy, "params": plan.params.describe(),
            "depth": plan.depth, "samples": samples}


def bench_cnn_single(samples: int = CNN_SAMPLES, generic: int = GENERIC_SAMPLES) -> dict[str, Any]:
    """``digits-cnn-fast`` in the taps layout vs ``digits-cnn-poly`` in the generic one."""
    out = {"digits-cnn-fast": _single("digits-cnn-fast", samples)}
    if generic:
        out["digits-cnn-poly"] = _single("digits-cnn-poly", generic)
        out["speedup"] = (out["digits-cnn-poly"]["latency_s_median"]
                          / out["digits-cnn-fast"]["latency_s_median"])
    out["max_logit_error"] = out["digits-cnn-fast"]["max_logit_error"]
    return out


def taps_accuracy(n: int = 360) -> dict[str, Any]:
    """``digits-cnn-fast``, single-sample CKKS on ``n`` test images: accuracy and agreement."""
    from veil import he, models
    from veil.models import zoo

    entry = zoo.load("digits-cnn-fast")
    plan = models.plan(entry.model, (1, 8, 8), layout="single")
    ctx = he.CKKSContext.generate(plan.params, galois_keys=True)
    compiled = models.compile(entry.model, ctx.public(), plan)
    with torch.no_grad():
        ref = entry.model(entry.x_test[:n]).numpy()
    t0 = time.perf_counter()
    ys = np.concatenate([models.decrypt_output(ctx, compiled(models.encrypt_input(ctx, x, plan)))
                         for x in entry.x_test[:n]])
    return {"samples": n, "seconds": time.perf_counter() - t0,
            "ckks_accuracy": float((ys.argmax(1) == entry.y_test[:n].numpy()).mean()),
            "plaintext_accuracy": float((ref.argmax(1) == entry.y_test[:n].numpy()).mean()),
            "agreement": float((ys.argmax(1) == ref.argmax(1)).mean()),
            "max_logit_error": float(np.abs(ys - ref).max())}


def _mpc_job(party: Any, name_models: list, xs: torch.Tensor) -> Any:
    from veil import models

    res = {}
    for name, net, shape in name_models:
        before = party.comm_stats()["bytes_sent"]
        t0 = time.perf_counter()
        models.mpc_forward(party, net if party.rank == 0 else None,
                           xs[name] if party.rank == 1 else None, input_shape=shape)
        res[name] = (time.perf_counter() - t0, party.comm_stats()["bytes_sent"] - before)
    return res


def bench_mpc() -> dict[str, Any]:
    from veil import mpc
    from veil.models import zoo

    entries = {n: zoo.load(n) for n in ("digits-mlp", "digits-cnn")}
    cases = [(n, e.model, e.input_shape) for n, e in entries.items()]
    xs = {n: e.x_test[:MPC_BATCH] for n, e in entries.items()}
    res = mpc.run(_mpc_job, parties=2, args=(cases, xs), timeout=600)
    out = {}
    for n, e in entries.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            e.model(xs[n])
        plain = (time.perf_counter() - t0) / MPC_BATCH
        secs = max(r[n][0] for r in res) / MPC_BATCH
        sent = sum(r[n][1] for r in res) / MPC_BATCH
        out[n] = {"ms_per_sample": secs * 1e3, "bytes_per_sample_all_parties": sent,
                  "plaintext_ms_per_sample": plain * 1e3, "slowdown": secs / plain}
    return out


def _acc_job(party: Any, cases: list) -> Any:
    from veil import models

    return [models.mpc_forward(party, net if party.rank == 0 else None,
                               x if party.rank == 1 else None, input_shape=shape)
            for net, x, shape in cases]


def accuracy_table(ckks_models: tuple[str, ...] = ("digits-logreg", "digits-mlp-poly",
                                                   "digits-cnn-poly", "digits-cnn-fast",
                                                   "digits-mlp+fix")) -> Any:
    """Test-set accuracy of every zoo model: plaintext, MPC (2 parties), CKKS batched.

    ``digits-mlp+fix`` is the ReLU MLP after ``models.fix`` (degree-4 fit of ReLU on the
    activation range seen on the training data): approximation error included.
    """
    from veil import he, models, mpc
    from veil.models import zoo

    rows: dict[str, dict[str, Any]] = {}
    entries = {n: zoo.load(n) for n in zoo.names()}
    cases = [(e.model, e.x_test, e.input_shape) for e in entries.values()]
    mpc_out = mpc.run(_acc_job, parties=2, args=(cases,), timeout=1200)[1]
    for (n, e), y in zip(entries.items(), mpc_out):
        with torch.no_grad():
            plain = e.model(e.x_test).argmax(1)
        rows[n] = {"plaintext": e.accuracy,
                   "mpc": float((y.argmax(1) == e.y_test).float().mean()),
                   "mpc_agreement": float((y.argmax(1) == plain).float().mean())}
    for n in ckks_models:
        base = n.split("+")[0]
        e = entries[base]
        net = e.model
        if n.endswith("+fix"):
            xtr = zoo.digits(e.input_shape)[0]
            lo, hi = np.array(list(models.activation_ranges(net, xtr).values())).T
            net = models.fix(net, domain=(float(lo.min()) - 1, float(hi.max()) + 1), degree=4)
        plan = models.plan(net, e.input_shape)
        ctx = he.CKKSContext.generate(plan.params, galois_keys=False)
        compiled = models.compile(net, ctx.public(), plan)
        t0 = time.perf_counter()
        y = models.decrypt_output(ctx, compiled(models.encrypt_input(ctx, e.x_test, plan)))
        with torch.no_grad():
            ref = net(e.x_test).numpy()
        rows.setdefault(n, {"plaintext": float((ref.argmax(1) == e.y_test.numpy()).mean())})
        rows[n].update({"ckks": float((y.argmax(1) == e.y_test.numpy()).mean()),
                        "ckks_agreement": float((y.argmax(1) == ref.argmax(1)).mean()),
                        "ckks_max_logit_error": float(np.abs(y - ref).max()),
                        "ckks_seconds_for_360": time.perf_counter() - t0,
                        "ckks_N": plan.params.poly_modulus_degree, "depth": plan.depth})
    return rows


@pytest.mark.benchmark(group="inference")
def test_bench_accuracy_table(benchmark):
    result = benchmark.pedantic(accuracy_table, rounds=1, iterations=1)
    benchmark.extra_info.update({k: str(v) for k, v in result.items()})
    print(result)


@pytest.mark.benchmark(group="inference")
def test_bench_ckks_logreg_batched(benchmark):
    result = benchmark.pedantic(bench_logreg, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(result)
    assert result["veil_agreement"] >= result["tenseal_agreement"] - 0.01


@pytest.mark.benchmark(group="inference")
def test_bench_ckks_cnn_single(benchmark):
    result = benchmark.pedantic(bench_cnn_single, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(result)
    assert result["max_logit_error"] < 0.1


@pytest.mark.benchmark(group="inference")
def test_bench_mpc(benchmark):
    result = benchmark.pedantic(bench_mpc, rounds=1, iterations=1)
    benchmark.extra_info.update({k: str(v) for k, v in result.items()})
    print(result)


if __name__ == "__main__":
    import json
    import sys

    fns = {f.__name__: f for f in (bench_logreg, bench_cnn_single, taps_accuracy, bench_mpc,
                                   accuracy_table)}
    for name in sys.argv[1:] or list(fns):
        fn = fns[name]
        print(fn.__name__, json.dumps(fn(), indent=1, default=str), flush=True)
