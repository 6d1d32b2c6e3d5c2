"""MPC per-operation cost: Veil (CSPRNG + accounting + safe messages) vs raw CrypTen.

Both sides use CrypTen's dealer (TTP) provider and the same fork-based launcher; the only
difference is whether ``veil.mpc._crypten.install`` ran.
Each configuration (parties x implementation) is one long-lived multi-process session; inside it
every
operation on 10^5 elements is run once to warm up and then ``REPEATS`` times, each timed inside
the parties between barriers (the slowest party counts), and the median is reported. Sessions of
Veil and raw CrypTen alternate ``SESSIONS`` times to spread the noise of a shared machine, and
the median over sessions is kept. Next to wall time, the CPU time of all parties together
(``time.process_time`` summed over the parties, dealer excluded) is reported: on a loaded,
shared machine it is the steadier measure of Veil's own overhead. Bytes come from Veil's
accounting (the protocol, hence the bytes, is the same for both).

Run: ``make bench`` or ``python -m pytest benchmarks/bench_mpc.py --benchmark-only -s``;
``python benchmarks/bench_mpc.py`` prints the table directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
import time
from typing import Any

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "_rng_harness", ROOT / "tests" / "mpc" / "_rng_harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

OPS = ("mul", "matmul", "lt", "relu", "exp", "reciprocal")
NUMEL = 10**5
MATMUL_SIDE = 316  # 316 x 316 ~ 10^5 elements
REPEATS = int(os.environ.get("VEIL_BENCH_REPEATS", "3"))
SESSIONS = int(os.environ.get("VEIL_BENCH_SESSIONS", "2"))
PARTIES = (2, 3)


def _op_fn(name: str, x: Any, y: Any, a: Any, b: Any) -> Any:
    if name == "mul":
        return lambda: x * y
    if name == "matmul":
        return lambda: a @ b
    if name == "lt":
        return lambda: x < y
    if name == "relu":
        return lambda: x.relu()
    if name == "exp":
        return lambda: x.exp()
    return lambda: y.reciprocal()


def _bench_job(crypten, rank, ops, repeats, veil):
    torch.set_num_threads(1)
    comm = crypten.communicator.get()
    g = torch.Generator().manual_seed(1)  # benchmark data, the same in every party
    x = crypten.cryptensor(torch.rand(NUMEL, generator=g) * 4 - 2, src=0)
    y = crypten.cryptensor(torch.rand(NUMEL, generator=g) * 4 + 1, src=1)
    a = crypten.cryptensor(torch.rand(MATMUL_SIDE, MATMUL_SIDE, generator=g), src=0)
    b = crypten.cryptensor(torch.rand(MATMUL_SIDE, MATMUL_SIDE, generator=g), src=1)
    out: dict[str, Any] = {}
    for name in ops:
        fn = _op_fn(name, x, y, a, b)
        fn()  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            comm.barrier()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        nbytes = None
        if veil:
            from veil.mpc import accounting

            accounting.reset()
            fn()
            s = accounting.stats()
            nbytes = {"sent": s["bytes_sent"], "received": s["bytes_received"],
                      "rounds": s["rounds"]}
        out[name] = {"times": times, "cpu": cpu, "bytes": nbytes}
    return out


def measure(parties: int, *, ops=OPS, repeats=REPEATS, sessions=SESSIONS) -> dict[str, Any]:
    """Median seconds per op (slowest party) for Veil and raw CrypTen, plus Veil's byte counts."""
    per: dict[str, dict[str, list[float]]] = {"veil": {}, "raw": {}}
    cpu: dict[str, dict[str, list[float]]] = {"veil": {}, "raw": {}}
    counts: dict[str, Any] = {}
    for _ in range(sessions):
        for impl in ("veil", "raw"):
            res = harness.run_parties(_bench_job, parties, args=(ops, repeats, impl == "veil"),
                                      provider="TTP", veil=impl == "veil", timeout=900)
            for name in ops:
                slowest = [max(r[name]["times"][i] for r in res) for i in range(repeats)]
                per[impl].setdefault(name, []).append(statistics.median(slowest))
                summed = [sum(r[name]["cpu"][i] for r in res) for i in range(repeats)]
                cpu[impl].setdefault(name, []).append(statistics.median(summed))
                if impl == "veil":
                    counts[name] = res[0][name]["bytes"]
    table = {}
    for name in ops:
        v, r = statistics.median(per["veil"][name]), statistics.median(per["raw"][name])
        vc, rc = statistics.median(cpu["veil"][name]), statistics.median(cpu["raw"][name])
        table[name] = {"veil_s": v, "raw_s": r, "ratio": v / r, "veil_cpu_s": vc,
                       "raw_cpu_s": rc, "cpu_ratio": vc / rc, "party0_bytes": counts[name]}
    return table


def _format(parties: int, table: dict[str, Any]) -> str:
    lines = [f"{parties} parties, dealer (TTP), 10^5 elements (matmul {MATMUL_SIDE}x"
             f"{MATMUL_SIDE}); median of {REPEATS} repeats x {SESSIONS} sessions",
             f"{'op':<11}{'veil ms':>10}{'raw ms':>10}{'ratio':>8}{'veil cpu':>10}"
             f"{'raw cpu':>10}{'ratio':>8}{'p0 sent':>12}{'p0 recv':>12}{'rounds':>8}"]
    for name, row in table.items():
        b = row["party0_bytes"]
        lines.append(f"{name:<11}{row['veil_s'] * 1e3:>10.1f}{row['raw_s'] * 1e3:>10.1f}"
                     f"{row['ratio']:>8.3f}{row['veil_cpu_s'] * 1e3:>10.1f}"
                     f"{row['raw_cpu_s'] * 1e3:>10.1f}{row['cpu_ratio']:>8.3f}"
                     f"{b['sent']:>12}{b['received']:>12}{b['rounds']:>8}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tables() -> dict[int, Any]:
    return {}


@pytest.mark.parametrize("parties", PARTIES)
def test_ops_veil_vs_raw_crypten(benchmark, tables, parties: int) -> None:
    table = benchmark.pedantic(measure, args=(parties,), rounds=1, iterations=1)
    tables[parties] = table
    benchmark.extra_info["per_op"] = table
    print("\n" + _format(parties, table))
    for row in table.values():
        assert row["veil_s"] > 0 and row["raw_s"] > 0


# ------------------------------------------------------------------ the generator on its own


@pytest.mark.parametrize("numel", [10**5, 4 * 10**6])
@pytest.mark.parametrize("generator", ["veil-chacha20", "torch-mt19937"])
def test_ring_element_generation(benchmark, generator: str, numel: int) -> None:
    """One draw of ``numel`` ring elements: Veil's ChaCha20 vs CrypTen's torch.randint."""
    from veil.mpc._crypten import rng

    benchmark.group = f"random ring elements, n={numel}"
    if generator == "veil-chacha20":
        stream = rng.SecureStream.fresh()
        out = benchmark(rng.generate_random_ring_element, (numel,), generator=stream)
    else:
        g = torch.Generator().manual_seed(1)
        out = benchmark(torch.randint, -(2**63), 2**63 - 1, (numel,), generator=g,
                        dtype=torch.long)
    benchmark.extra_info["GB_per_s"] = numel * 8 / benchmark.stats.stats.median / 1e9
    assert out.shape == (numel,)


# ------------------------------------------------------------------------------ GPU speed-up


def _matmul_job(crypten, rank, spec, side, repeats):
    from veil.mpc import device

    d = device.resolve(spec, rank=rank)
    g = torch.Generator().manual_seed(2)
    a = crypten.cryptensor(torch.rand(side, side, generator=g), src=0, device=d)
    b = crypten.cryptensor(torch.rand(side, side, generator=g), src=1, device=d)
    comm = crypten.communicator.get()
    (a @ b)
    times = []
    for _ in range(repeats):
        comm.barrier()
        if d.type == "cuda":
            torch.cuda.synchronize(d)
        t0 = time.perf_counter()
        c = a @ b
        if d.type == "cuda":
            torch.cuda.synchronize(d)
        times.append(time.perf_counter() - t0)
    del c
    return times


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")
def test_cuda_matmul_2048_speedup(benchmark) -> None:
    def both() -> dict[str, float]:
        out = {}
        for spec in ("cpu", "cuda"):
            res = harness.run_parties(_matmul_job, 2, args=(spec, 2048, 3), provider="TTP",
                                      timeout=900)
            out[spec] = statistics.median(max(r[i] for r in res) for i in range(3))
        out["speedup"] = out["cpu"] / out["cuda"]
        return out

    result = benchmark.pedantic(both, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n2048x2048 MPC matmul, 2 parties: cpu {result['cpu']:.3f} s, cuda "
          f"{result['cuda']:.3f} s, speed-up {result['speedup']:.1f}x")


if __name__ == "__main__":  # pragma: no cover - manual run
    from veil.mpc._crypten import import_crypten

    import_crypten()
    all_tables = {}
    for p in PARTIES:
        all_tables[p] = measure(p)
        print(_format(p, all_tables[p]), flush=True)
    print(json.dumps(all_tables, indent=1))
