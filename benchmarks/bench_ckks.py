"""Veil's CKKS vs raw TenSEAL, side by side (N=8192, primes (60, 40, 40, 60), scale 2^40).

Run as a pytest-benchmark suite (``pytest benchmarks/bench_ckks.py --benchmark-only``, grouped
by operation) or as a script that prints Veil/TenSEAL time ratios::

    python benchmarks/bench_ckks.py [--rounds 30]

Operations: encrypt 4096 values, ct+ct, ct*ct (with relinearization and rescale), dot with a
plain vector of 4096, vector (64) x plain matrix (64 x 10). Raw TenSEAL is its public Python API
(``ts.ckks_vector`` and operators); Veil adds input validation, level/error bookkeeping and the
operand-ordering that protects callers from TenSEAL's in-place mod-switching.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from veil.he.lattice.ckks import CKKSContext
from veil.he.params import CKKSParams

SLOTS = 4096


def _setup() -> dict[str, Any]:
    import tenseal as ts

    rng = np.random.default_rng(0)  # benchmark data only
    x, y = rng.uniform(-1, 1, SLOTS), rng.uniform(-1, 1, SLOTS)
    v64, m = rng.uniform(-1, 1, 64), rng.uniform(-1, 1, (64, 10))
    p = CKKSParams.default()
    veil = CKKSContext.generate(p, galois_keys=True)
    raw = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
    raw.global_scale = 2.0**p.scale_bits
    raw.generate_galois_keys()
    return {
        "x": x, "y": y, "v64": v64, "m": m, "m_list": m.tolist(), "x_list": x.tolist(),
        "y_list": y.tolist(), "veil": veil, "raw": raw, "ts": ts,
        "vx": veil.encrypt(x), "vy": veil.encrypt(y), "v64e": veil.encrypt(v64),
        "rx": ts.ckks_vector(raw, x.tolist()), "ry": ts.ckks_vector(raw, y.tolist()),
        "r64": ts.ckks_vector(raw, v64.tolist()),
    }


def workloads(s: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """op -> (veil, raw TenSEAL). Both take numpy input where a user would have numpy."""
    ts = s["ts"]
    return {
        "encrypt": (lambda: s["veil"].encrypt(s["x"]),
                    lambda: ts.ckks_vector(s["raw"], s["x"].tolist())),
        "add": (lambda: s["vx"] + s["vy"], lambda: s["rx"] + s["ry"]),
        "mul": (lambda: s["vx"] * s["vy"], lambda: s["rx"] * s["ry"]),
        "dot_plain": (lambda: s["vx"].dot(s["y"]), lambda: s["rx"].dot(s["y"].tolist())),
        "vecmat_64x10": (lambda: s["v64e"].matmul(s["m"]), lambda: s["r64"].mm(s["m"].tolist())),
    }


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    return _setup()


OPS = ["encrypt", "add", "mul", "dot_plain", "vecmat_64x10"]


@pytest.mark.parametrize("impl", ["veil", "tenseal"])
@pytest.mark.parametrize("op", OPS)
def test_ckks(benchmark: Any, setup: dict[str, Any], op: str, impl: str) -> None:
    benchmark.group = f"ckks-{op}"
    veil_fn, raw_fn = workloads(setup)[op]
    benchmark(veil_fn if impl == "veil" else raw_fn)


def _time(fn: Callable[[], Any], clock: Callable[[], float], number: int) -> float:
    t = clock()
    for _ in range(number):
        fn()
    return (clock() - t) / number


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    s = _setup()
    number = {"add": 200, "encrypt": 5, "mul": 5, "dot_plain": 2, "vecmat_64x10": 1}
    print("median over rounds, Veil and TenSEAL interleaved; CPU time is robust to other load")
    print(f"{'op':<14}{'veil ms':>10}{'tenseal ms':>12}{'ratio':>8}{'cpu ratio':>11}")
    for op, (veil_fn, raw_fn) in workloads(s).items():
        veil_fn(), raw_fn()  # warm up
        wall: dict[str, list[float]] = {"v": [], "r": []}
        cpu: dict[str, list[float]] = {"v": [], "r": []}
        for _ in range(args.rounds):
            for key, fn in (("v", veil_fn), ("r", raw_fn)):
                wall[key].append(_time(fn, time.perf_counter, number[op]))
                cpu[key].append(_time(fn, time.process_time, number[op]))
        vm, rm = (float(np.median(wall[k])) * 1e3 for k in ("v", "r"))
        vc, rc = (float(np.median(cpu[k])) for k in ("v", "r"))
        print(f"{op:<14}{vm:>10.3f}{rm:>12.3f}{vm / rm:>8.3f}{vc / rc:>11.3f}")


if __name__ == "__main__":
    main()
