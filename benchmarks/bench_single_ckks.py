"""Single-sample CKKS inference of common CNNs: Veil vs the raw TenSEAL tutorial pipeline (#15).

For each net (default: ``digits28-cnn``, ``digits28-cnn5``, ``digits28-mlp``, ``digits-cnn-fast``,
``digits-mlp-poly`` of ``veil.models.zoo``), on the same weights and the same test images, in
one run:

1. **raw TenSEAL**, the style of its MNIST tutorial: ``ts.im2col_encoding`` of the image and one
   ``conv2d_im2col`` per output channel, ``CKKSVector.pack_vectors``, ``square_``, ``mm`` for
   every dense map (average pooling and flattening composed into the next dense matrix; a
   quadratic activation ``a*y**2 + b*y + c`` folded into the maps around one ``square_``); an
   MLP starts with ``ckks_vector`` + ``mm``. Two parameter sets: the tutorial's (N = 8192,
   primes [31, 26 x 6, 31], scale 2^26) and N = 16384 with usable precision ([60, 40 x depth,
   60], scale 2^40). Only this benchmark imports tenseal outside ``veil.he``: it is a baseline.
2. **Veil single-sample layout**: ``models.plan(net, shape, layout="single")``, ``plan.keygen()``
   (or ``he.CKKSContext.generate(plan.params, galois_keys=plan.galois_keys)``), ``compile``
   against the public context, ``encrypt_input`` / ``decrypt_output``.
3. **Veil batched layout**: images per second at a full batch (``plan.params.slots`` images per
   call) and bytes per image (request + response).

Per image: latency (encrypt + evaluate + decrypt) and evaluation alone (median over images),
max ``|logit - torch logit|`` over the images, request bytes (the serialized encrypted input),
response bytes, and the public context (secret key dropped, Galois keys kept) serialized.
Times are wall-clock; the machine's other load shows in them.

Run ``python benchmarks/bench_single_ckks.py [--images 3] [--nets digits28-cnn,...]
[--no-batched] [--batch N] [--json out.json]`` (prints one table, the ratios and the goals),
or ``python -m pytest benchmarks/bench_single_ckks.py --benchmark-only -s`` (one image of
``digits28-cnn``, no batched run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("VEIL_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "veil"))

NETS = ("digits28-cnn", "digits28-cnn5", "digits28-mlp", "digits-cnn-fast", "digits-mlp-poly")
IMAGES = int(os.environ.get("VEIL_BENCH_SINGLE_IMAGES", "3"))
TENSEAL_SETS = ("N8192", "N16384")
# the goals of issue #15 for the Veil single-sample layout
GOALS = {"latency_s": 0.4, "speedup": 8.0, "max_logit_error": 0.05, "request_bytes": 4e6,
         "public_context_bytes": 100e6}


# -- a zoo net lowered to the tutorial pipeline ---------------------------------------------------

@dataclass
class Tutorial:
    """A net as TenSEAL's tutorial runs it: an optional im2col convolution, then dense maps.

    ``conv`` is ``(kernels (C, kh, kw), bias (C,), stride, padding)``; ``dense`` the maps
    ``(W (in, out), b (out,))`` in order. One ``square_`` sits between consecutive stages (conv
    and dense maps); quadratic activations are folded into the maps around it.
    """

    conv: list[Any] | None
    dense: list[list[np.ndarray]]
    lists: list[tuple[list, list]] = field(default_factory=list)  # dense maps as python lists

    @property
    def depth(self) -> int:
        """Levels used: one per map and square, one more for ``pack_vectors`` (masks)."""
        stages = len(self.dense) + (self.conv is not None)
        return 2 * stages - 1 + (self.conv is not None)


def _segments(net: nn.Module) -> tuple[list[list[nn.Module]], list[tuple[float, ...]]]:
    """The affine runs of a sequential net and the polynomial activations between them."""
    from veil.models.approx import PolyActivation

    segs: list[list[nn.Module]] = [[]]
    acts: list[tuple[float, ...]] = []
    for m in net:
        if isinstance(m, PolyActivation):
            acts.append(tuple(float(c) for c in m.coeffs))
            segs.append([])
        else:
            segs[-1].append(m)
    return segs, acts


def _affine(mods: list[nn.Module], shape: tuple[int, ...]) -> tuple[Any, Any, tuple[int, ...]]:
    """``(W (in, out), b, out_shape)`` of an affine run, probed in float64 on the identity."""
    n = math.prod(shape)
    seq = copy.deepcopy(nn.Sequential(*mods)).double().eval()
    with torch.no_grad():
        zero = seq(torch.zeros(1, *shape, dtype=torch.float64))
        out = seq(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
    b = zero.reshape(-1).numpy()
    return out.reshape(n, -1).numpy() - b, b, tuple(zero.shape[1:])


def _im2col_conv(mods: list[nn.Module]) -> nn.Conv2d | None:
    """The first layer if it is a lone one-channel Conv2d that ``ts.im2col_encoding`` can run."""
    if len(mods) != 1 or not isinstance(mods[0], nn.Conv2d):
        return None
    c = mods[0]
    ok = (c.in_channels == 1 and c.groups == 1 and c.dilation == (1, 1) and c.bias is not None
          and c.stride[0] == c.stride[1] and c.padding[0] == c.padding[1]
          and isinstance(c.padding, tuple))
    return c if ok else None


def _fold(stages: list[list[Any]], acts: list[tuple[float, ...]]) -> None:
    """Fold ``c0 + c1*y + c2*y**2`` into the maps around one square (``s*(r*(y + d))**2 + k``)."""
    for i, coeffs in enumerate(acts):
        c = list(coeffs) + [0.0] * (3 - len(coeffs))
        if len(coeffs) > 3 or c[2] == 0.0:
            raise ValueError(f"activation {coeffs} is not a quadratic; the tutorial squares")
        c0, c1, c2 = c
        r, d, s = math.sqrt(abs(c2)), c1 / (2 * c2), math.copysign(1.0, c2)
        k = c0 - c2 * d * d
        w, b = stages[i][0], stages[i][1]
        stages[i][0], stages[i][1] = w * r, r * (b + d)  # kernels or dense map: same scaling
        nw, nb = stages[i + 1]
        stages[i + 1] = [s * nw, nb + k * nw.sum(axis=0)]


def tutorial_lowering(net: nn.Module, input_shape: tuple[int, ...]) -> Tutorial:
    """Lower a sequential zoo net (affine runs separated by quadratic activations)."""
    segs, acts = _segments(net)
    shape, conv, rest = tuple(input_shape), None, segs
    c = _im2col_conv(segs[0])
    stages: list[list[Any]] = []
    if c is not None:
        kernels = c.weight.detach().double().numpy()[:, 0]
        stages.append([kernels, c.bias.detach().double().numpy()])
        with torch.no_grad():
            shape = tuple(c(torch.zeros(1, *shape)).shape[1:])
        rest = segs[1:]
    for mods in rest:
        m, b, shape = _affine(mods, shape)
        stages.append([m, b])
    _fold(stages, acts)
    if c is not None:
        conv = [stages[0][0], stages[0][1], int(c.stride[0]), int(c.padding[0])]
        stages = stages[1:]
    tut = Tutorial(conv, stages)
    tut.lists = [(m.tolist(), b.tolist()) for m, b in stages]
    return tut


def tutorial_plain(tut: Tutorial, x: torch.Tensor) -> np.ndarray:
    """The lowered pipeline in float64 plaintext (checks the lowering against torch)."""
    dense = tut.dense
    if tut.conv is not None:
        k, b, stride, pad = tut.conv
        h = torch.nn.functional.conv2d(x.double().reshape(1, 1, *x.shape[-2:]),
                                       torch.tensor(k)[:, None], torch.tensor(b), stride=stride,
                                       padding=pad).reshape(-1).numpy()
    else:
        h, dense = x.double().reshape(-1).numpy() @ dense[0][0] + dense[0][1], dense[1:]
    for m, b in dense:
        h = (h * h) @ m + b
    return h


# -- raw TenSEAL ----------------------------------------------------------------------------------

def tenseal_params(which: str, depth: int) -> tuple[int, list[int], int]:
    """``(N, coefficient modulus bit sizes, scale bits)`` of a baseline parameter set."""
    if which == "N8192":  # the tutorial's parameters: 6 levels
        if depth > 6:
            raise ValueError(f"depth {depth} does not fit the tutorial's 6 levels")
        return 8192, [31, 26, 26, 26, 26, 26, 26, 31], 26
    return 16384, [60] + [40] * depth + [60], 40


def _ts_encrypt(ts: Any, ctx: Any, tut: Tutorial, x: torch.Tensor) -> tuple[Any, int]:
    if tut.conv is not None:
        k, _, stride, pad = tut.conv
        img = np.pad(x.double().numpy().reshape(x.shape[-2:]), pad)
        return ts.im2col_encoding(ctx, img.tolist(), k.shape[1], k.shape[2], stride)
    return ts.ckks_vector(ctx, x.double().reshape(-1).tolist()), 0


def _ts_eval(ts: Any, tut: Tutorial, enc: Any, windows: int, biases: list[Any]) -> Any:
    """The tutorial's forward pass; ``biases[i]`` is added after dense map ``i``."""
    maps = [m for m, _ in tut.lists]
    if tut.conv is not None:
        k, b = tut.conv[0], tut.conv[1]
        chans = [enc.conv2d_im2col(kc.tolist(), windows) + float(bc) for kc, bc in zip(k, b)]
        y = ts.CKKSVector.pack_vectors(chans)
    else:
        y = enc.mm(maps[0]) + biases[0]
    for i in range(tut.conv is None, len(maps)):
        y.square_()
        y = y.mm(maps[i]) + biases[i]
    return y


def _ts_biases(ts: Any, ctx: Any, tut: Tutorial, plain: bool) -> list[Any]:
    """Dense biases: plain lists (the tutorial) or encrypted once with the public key.

    ``mm`` reads the replicated copies of its input that TenSEAL keeps across the slots; a
    plain vector is encoded once, zero-padded, so after ``+ bias`` the copies lack the bias and
    the next ``mm`` is off (the more, the larger the bias). An encrypted vector is replicated.
    """
    if plain:
        return [b for _, b in tut.lists]
    return [ts.ckks_vector(ctx, b) for _, b in tut.lists]


def bench_tenseal(tut: Tutorial, xs: torch.Tensor, want: np.ndarray, which: str, *,
                  plain_bias: bool = False) -> dict:
    """The tutorial pipeline on ``xs`` under parameter set ``which`` (N8192 or N16384)."""
    import tenseal as ts

    n, coeffs, scale_bits = tenseal_params(which, tut.depth)
    t0 = time.perf_counter()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, -1, coeffs)
    ctx.global_scale = 2.0**scale_bits
    ctx.generate_galois_keys()
    keygen = time.perf_counter() - t0
    pub = ctx.copy()
    pub.make_context_public()
    ctx_bytes = len(pub.serialize(save_galois_keys=True, save_relin_keys=True))
    del pub
    biases = _ts_biases(ts, ctx, tut, plain_bias)
    times, ys, req, resp = [], [], 0, 0
    for x in xs:
        t0 = time.perf_counter()
        enc, windows = _ts_encrypt(ts, ctx, tut, x)
        t1 = time.perf_counter()
        out = _ts_eval(ts, tut, enc, windows, biases)
        t2 = time.perf_counter()
        ys.append(np.array(out.decrypt()))
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        req, resp = len(enc.serialize()), len(out.serialize())
    return _summary(times, np.stack(ys), want) | {
        "params": f"N={n} {coeffs} 2^{scale_bits}", "keygen_s": keygen, "request_bytes": req,
        "bias": "plain" if plain_bias else "encrypted",
        "response_bytes": resp, "public_context_bytes": ctx_bytes}


def _summary(times: list[tuple[float, float, float]], ys: np.ndarray, want: np.ndarray) -> dict:
    t = np.array(times)
    return {"latency_s": float(np.median(t.sum(1))), "encrypt_s": float(np.median(t[:, 0])),
            "eval_s": float(np.median(t[:, 1])), "decrypt_s": float(np.median(t[:, 2])),
            "max_logit_error": float(np.abs(ys - want).max()),
            "argmax_agreement": float((ys.argmax(1) == want.argmax(1)).mean()),
            "images": len(ys)}


# -- Veil -----------------------------------------------------------------------------------------

def veil_context(plan: Any) -> Any:
    """The secret context a plan needs: ``plan.keygen()`` where the plan has it."""
    keygen = getattr(plan, "keygen", None)
    if callable(keygen):
        return keygen()
    from veil import he

    return he.CKKSContext.generate(plan.params, galois_keys=plan.galois_keys)


def bench_veil_single(net: nn.Module, shape: tuple[int, ...], xs: torch.Tensor,
                      want: np.ndarray) -> dict:
    """Veil's single-sample layout: one image per request, the public context on the server."""
    from veil import models

    t0 = time.perf_counter()
    plan = models.plan(net, shape, layout="single")
    ctx = veil_context(plan)
    pub = ctx.public()
    t1 = time.perf_counter()
    compiled = models.compile(net, pub, plan)
    compile_s = time.perf_counter() - t1
    keygen = t1 - t0
    times, ys, req, resp = [], [], 0, 0
    for x in xs:
        t0 = time.perf_counter()
        enc = models.encrypt_input(ctx, x, plan)
        t1 = time.perf_counter()
        out = compiled(enc)
        t2 = time.perf_counter()
        ys.append(models.decrypt_output(ctx, out).reshape(-1))
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        req, resp = len(enc.serialize()), len(out.serialize())
    return _summary(times, np.stack(ys), want) | {
        "params": _describe(plan.params), "layout": plan.input_encoding.get("kind"),
        "depth": plan.depth, "keygen_s": keygen, "compile_s": compile_s, "request_bytes": req,
        "response_bytes": resp, "public_context_bytes": len(pub.serialize()),
        "predicted_error": getattr(plan, "predicted_error", None),
        "note": getattr(plan, "note", "")}


def bench_veil_batched(net: nn.Module, shape: tuple[int, ...], x_test: torch.Tensor,
                       batch: int | None = None) -> dict:
    """Veil's batched layout at a full batch (``plan.params.slots`` images in one call)."""
    from veil import models

    plan = models.plan(net, shape)
    n = int(batch or plan.params.slots)
    x = x_test.repeat(-(-n // len(x_test)), *([1] * (x_test.ndim - 1)))[:n]
    with torch.no_grad():
        want = net(x).double().numpy()
    ctx = veil_context(plan)
    compiled = models.compile(net, ctx.public(), plan)
    t0 = time.perf_counter()
    enc = models.encrypt_input(ctx, x, plan)
    t1 = time.perf_counter()
    out = compiled(enc)
    t2 = time.perf_counter()
    y = models.decrypt_output(ctx, out)
    t3 = time.perf_counter()
    # per tensor: one envelope of the whole request would hold it all in memory twice
    req = sum(len(t.serialize()) for t in enc.tensors)
    resp = sum(len(t.serialize()) for t in out.tensors)
    return {"params": _describe(plan.params), "depth": plan.depth, "batch": n,
            "images_per_s": n / (t3 - t0), "server_images_per_s": n / (t2 - t1),
            "call_s": t3 - t0, "encrypt_s": t1 - t0, "eval_s": t2 - t1, "decrypt_s": t3 - t2,
            "bytes_per_image": (req + resp) / n, "request_bytes": req, "response_bytes": resp,
            "max_logit_error": float(np.abs(y - want).max()),
            "argmax_agreement": float((y.argmax(1) == want.argmax(1)).mean())}


def _describe(params: Any) -> str:
    d = params.describe()
    return f"N={d['poly_modulus_degree']} {d['coeff_mod_bit_sizes']} 2^{d['scale_bits']}"


# -- one net, all pipelines -----------------------------------------------------------------------

def _guard(fn: Any, *args: Any) -> dict:
    """Run one pipeline; a failure is reported in the table instead of ending the run."""
    try:
        return fn(*args)
    except Exception as exc:  # a benchmark row, not a control path
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def bench_net(name: str, images: int = IMAGES, *, batched: bool = True,
              batch: int | None = None, tenseal_sets: tuple[str, ...] = TENSEAL_SETS) -> dict:
    """TenSEAL (both parameter sets), Veil single and Veil batched on zoo net ``name``."""
    from veil.models import zoo

    entry = zoo.load(name)
    net, shape = entry.model, entry.input_shape
    xs = entry.x_test[:images]
    with torch.no_grad():
        want = net(xs).double().numpy()
    tut = tutorial_lowering(net, shape)
    lowering_error = max(float(np.abs(tutorial_plain(tut, x) - w).max())
                         for x, w in zip(xs, want))
    res: dict[str, Any] = {"net": name, "input_shape": list(shape), "accuracy": entry.accuracy,
                           "tutorial_depth": tut.depth, "tutorial_lowering_error": lowering_error}
    for which in tenseal_sets:
        res[f"tenseal_{which}"] = _guard(bench_tenseal, tut, xs, want, which)
    res["veil_single"] = _guard(bench_veil_single, net, shape, xs, want)
    if batched:
        res["veil_batched"] = _guard(bench_veil_batched, net, shape, entry.x_test, batch)
    v = res["veil_single"]
    for which in tenseal_sets:
        t = res[f"tenseal_{which}"]
        if "error" not in t and "error" not in v:
            res[f"speedup_vs_{which}"] = t["latency_s"] / v["latency_s"]
            res[f"eval_speedup_vs_{which}"] = t["eval_s"] / v["eval_s"]
    return res


def goals(res: dict) -> dict[str, bool | None]:
    """Issue #15's goals for the Veil single layout of one net (None: not measured)."""
    v = res.get("veil_single", {})
    if "error" in v or not v:
        return dict.fromkeys(GOALS)
    speed = res.get("speedup_vs_N16384")
    return {"latency_s": v["latency_s"] <= GOALS["latency_s"],
            "speedup": None if speed is None else speed >= GOALS["speedup"],
            "max_logit_error": v["max_logit_error"] <= GOALS["max_logit_error"],
            "request_bytes": v["request_bytes"] <= GOALS["request_bytes"],
            "public_context_bytes": v["public_context_bytes"] <= GOALS["public_context_bytes"]}


# -- the table ------------------------------------------------------------------------------------

def _row(net: str, what: str, r: dict) -> str:
    if "error" in r:
        return f"{net:<16}{what:<15}FAILED {r['error']}"
    mb = 1e6
    return (f"{net:<16}{what:<15}{r['latency_s']:>9.3f}{r['eval_s']:>9.3f}"
            f"{r['max_logit_error']:>10.2e}{r['argmax_agreement']:>6.2f}"
            f"{r['request_bytes'] / mb:>9.2f}{r['response_bytes'] / mb:>8.2f}"
            f"{r['public_context_bytes'] / mb:>9.1f}  {r['params']}")


def table(results: list[dict]) -> str:
    """One line per net and pipeline, then the ratios, the batched runs and the goals."""
    lines = [f"{'net':<16}{'pipeline':<15}{'total s':>9}{'eval s':>9}{'max err':>10}"
             f"{'agree':>6}{'req MB':>9}{'resp MB':>8}{'ctx MB':>9}  params"]
    for res in results:
        for key in [k for k in res if k.startswith("tenseal_")] + ["veil_single"]:
            lines.append(_row(res["net"], key, res[key]))
    lines.append("\nspeedup = TenSEAL time / Veil single time (total, eval only)")
    for res in results:
        parts = [f"vs {w}: {res[f'speedup_vs_{w}']:.1f}x, {res[f'eval_speedup_vs_{w}']:.1f}x"
                 for w in TENSEAL_SETS if f"speedup_vs_{w}" in res]
        lines.append(f"{res['net']:<16}" + ("; ".join(parts) or "-"))
    if any("veil_batched" in res for res in results):
        lines.append("\nVeil batched (one call of plan.params.slots images)")
    for res in results:
        b = res.get("veil_batched")
        if b is None:
            continue
        lines.append(f"{res['net']:<16}" + (f"FAILED {b['error']}" if "error" in b else
                     f"{b['images_per_s']:>9.1f} img/s ({b['server_images_per_s']:.1f} server)"
                     f"  {b['bytes_per_image'] / 1e3:>8.1f} kB/img  batch {b['batch']}"
                     f"  max err {b['max_logit_error']:.2e}  {b['params']}"))
    lines.append("\ngoals (Veil single): latency <= 0.4 s, >= 8x faster than TenSEAL N16384, "
                 "max logit error <= 0.05, request <= 4 MB, public context <= 100 MB")
    for res in results:
        g = goals(res)
        lines.append(f"{res['net']:<16}" + "  ".join(
            f"{k}: {'-' if ok is None else 'ok' if ok else 'MISSED'}" for k, ok in g.items()))
        v = res.get("veil_single", {})
        if v.get("note") or v.get("predicted_error") is not None:
            lines.append(f"{'':<16}layout {v.get('layout')}, predicted error "
                         f"{v.get('predicted_error')}; {v.get('note') or ''}")
    return "\n".join(lines)


def run(nets: tuple[str, ...] = NETS, images: int = IMAGES, *, batched: bool = True,
        batch: int | None = None) -> list[dict]:
    out = []
    for name in nets:
        out.append(bench_net(name, images, batched=batched, batch=batch))
        print(f"# {name} done", flush=True)
    return out


@pytest.mark.benchmark(group="single-ckks")
def test_bench_single_ckks(benchmark: Any) -> None:
    results = benchmark.pedantic(run, args=(("digits28-cnn",), 1), kwargs={"batched": False},
                                 rounds=1, iterations=1)
    benchmark.extra_info.update({"results": json.dumps(results, default=str)})
    print(table(results))
    res = results[0]
    assert res["tenseal_N16384"]["max_logit_error"] < 0.05  # the baseline is correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=IMAGES, help="test images per net")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated zoo names")
    ap.add_argument("--no-batched", action="store_true", help="skip the batched layout")
    ap.add_argument("--batch", type=int, default=None,
                    help="images per batched call (default: plan.params.slots)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    results = run(tuple(n for n in args.nets.split(",") if n), args.images,
                  batched=not args.no_batched, batch=args.batch)
    print(table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
