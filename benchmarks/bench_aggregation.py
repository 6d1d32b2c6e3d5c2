"""Secure aggregation cost: SecAgg masking vs Paillier vs CKKS vs plain (insecure) FedAvg sums.

Every party runs in this one process, one after the other (a simulation: no network), so
*client seconds* is the mean time one client spends on all of its protocol steps and *server
seconds* is everything the server (and, for HE, the key holder) does. *Bytes* are the wire bytes
a client sends, relative to sending its plain float32 update (the SecAgg paper reports 1.73x).
The raw baseline is plain FedAvg: the server adds ``clients`` float32 vectors.

Run as a script (prints the table)::

    python benchmarks/bench_aggregation.py [--clients 100] [--params 100000]
        [--he-clients 10] [--paillier-params 10000] [--ckks-params 100000]

or under pytest-benchmark (``make bench``; smaller sizes unless VEIL_BENCH_FULL=1).
Paillier and CKKS run with ``--he-clients`` clients (Paillier also on fewer params) and are
extrapolated linearly to the full size (client cost and bytes are linear in params, server cost
in clients x params), marked "extrap."; key generation is listed apart (once per key).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np
import pytest

from veil.fl import make_aggregator


def _updates(n: int, d: int) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(0)  # benchmark data, not key material
    return {c: gen.normal(0.0, 0.05, d).astype(np.float32) for c in range(n)}


def plain_sum_seconds(n: int, d: int) -> float:
    ups = _updates(n, d)
    t0 = time.perf_counter()
    total = np.zeros(d, dtype=np.float64)
    for v in ups.values():
        total += v
    return time.perf_counter() - t0


def run(backend: str, n: int, d: int, drop_rate: float = 0.0, **opts: Any) -> dict[str, Any]:
    ups = _updates(n, d)
    dropped = list(range(0, n, max(1, round(1 / drop_rate))))[: round(drop_rate * n)] \
        if drop_rate else []
    agg = make_aggregator(backend, num_clients=n, vector_length=d, clip=1.0, **opts)
    t0 = time.perf_counter()
    res = agg.aggregate(ups, dropouts={"masked": dropped})
    wall = time.perf_counter() - t0
    plain = sum(np.clip(ups[c].astype(np.float64), -1, 1) for c in res.survivors)
    return {
        "backend": backend, "clients": n, "params": d, "dropped": len(dropped),
        "client_s": res.stats.client_seconds, "server_s": res.stats.server_seconds,
        "setup_s": res.stats.setup_seconds, "key_holder_s": res.stats.key_holder_seconds,
        "wall_s": wall,
        "bytes_sent": res.stats.bytes_sent_per_client,
        "bytes_received": res.stats.bytes_received_per_client,
        "expansion": res.stats.expansion,
        "max_abs_error": float(np.max(np.abs(res.total - plain))),
    }


def _extrapolate(row: dict[str, Any], n: int, d: int) -> dict[str, Any]:
    """Client time and bytes scale with params; the server's additions with clients x params
    (its re-randomization of the sum, included there, only with params: an overestimate); the
    key holder's decryption with params."""
    out = dict(row)
    out["client_s"] = row["client_s"] * d / row["params"]
    kh = row["key_holder_s"]
    out["server_s"] = ((row["server_s"] - kh) * (n * d) / (row["clients"] * row["params"])
                       + kh * d / row["params"])
    out["bytes_sent"] = row["bytes_sent"] * d / row["params"]
    out["expansion"] = out["bytes_sent"] / (4 * d)
    out.update(clients=n, params=d, wall_s=float("nan"), extrapolated=True)
    return out


def table(rows: list[dict[str, Any]], plain_s: float) -> str:
    head = (f"{'backend':<11}{'clients':>8}{'params':>9}{'drop':>6}{'client s':>10}"
            f"{'server s':>10}{'keygen s':>10}{'srv/plain':>11}{'bytes/client':>14}{'x plain':>9}"
            f"{'max err':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        tag = " extrap." if r.get("extrapolated") else ""
        lines.append(
            f"{r['backend']:<11}{r['clients']:>8}{r['params']:>9}{r['dropped']:>6}"
            f"{r['client_s']:>10.3f}{r['server_s']:>10.2f}{r['setup_s']:>10.2f}"
            f"{r['server_s'] / plain_s:>11.0f}"
            f"{r['bytes_sent']:>14.0f}{r['expansion']:>9.3f}{r['max_abs_error']:>10.2e}{tag}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--he-clients", type=int, default=10)
    ap.add_argument("--paillier-params", type=int, default=10_000)
    ap.add_argument("--ckks-params", type=int, default=100_000)
    ap.add_argument("--backends", default="masking,secagg+,paillier,ckks",
                    help="comma-separated subset to run")
    a = ap.parse_args()
    which = set(a.backends.split(","))
    n, d = a.clients, a.params
    plain_s = plain_sum_seconds(n, d)
    rows = []
    if "masking" in which:
        rows += [run("masking", n, d, 0.0), run("masking", n, d, 0.1)]
    k = 2 * max(1, math.ceil(math.log2(n)))  # SecAgg+: k of order log n
    for rate in (0.0, 0.1) if "secagg+" in which else ():
        row = run("masking", n, d, rate, neighbours=k)
        rows.append({**row, "backend": f"secagg+{k}"})
    for backend, params in (("paillier", a.paillier_params), ("ckks", a.ckks_params)):
        if backend not in which:
            continue
        small = run(backend, a.he_clients, params)
        rows += [small, _extrapolate(small, n, d)]
    print(f"plain FedAvg server sum of {n} x {d} float32: {plain_s:.4f} s "
          f"(bytes per client {4 * d}, expansion 1.000)")
    print(table(rows, plain_s))


SMALL = os.environ.get("VEIL_BENCH_FULL") != "1"
N_BENCH, D_BENCH = (20, 20_000) if SMALL else (100, 100_000)


@pytest.mark.parametrize("drop_rate", [0.0, 0.1])
def test_masking(benchmark: Any, drop_rate: float) -> None:
    row = benchmark.pedantic(run, args=("masking", N_BENCH, D_BENCH, drop_rate), rounds=1,
                             iterations=1)
    benchmark.extra_info.update(row)
    benchmark.extra_info["server_vs_plain"] = row["server_s"] / plain_sum_seconds(N_BENCH,
                                                                                  D_BENCH)


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_he(benchmark: Any, backend: str) -> None:
    row = benchmark.pedantic(run, args=(backend, 5, 2_000), rounds=1, iterations=1)
    benchmark.extra_info.update(row)


if __name__ == "__main__":
    main()
