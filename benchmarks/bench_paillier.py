"""Veil's Paillier vs phe + gmpy2, side by side, 2048-bit keys.

Run as a pytest-benchmark suite (``make bench`` or
``pytest benchmarks/bench_paillier.py --benchmark-only``) or as a script that prints the ratios::

    python benchmarks/bench_paillier.py [--bits 2048] [--rounds 3]

Measured: encryption throughput (Veil public-key DJN path and the key holder's CRT path, vs phe's
``encrypt``), aggregation (10 parties each encrypt a vector, an aggregator adds them, the key holder
decrypts; values per second, Veil packed vs phe), and decryption. Veil's fixed-base table is built
once per key before timing (its one-off cost is printed separately).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from veil.he.paillier import PaillierKeyPair

BITS = 2048
N_ENC = 64  # values per encryption batch
PARTIES = 10
AGG_PHE = 24  # values per party for phe (slow)
AGG_VEIL = 1200  # values per party for Veil packed


def _keys(bits: int) -> tuple[PaillierKeyPair, Any, Any]:
    kp = PaillierKeyPair.generate(bits)
    pub, priv = kp.to_phe()
    return kp, pub, priv


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000, 1000, size=n)


# ----------------------------------------------------------------- workloads
def phe_encrypt(pub: Any, xs: np.ndarray) -> list[Any]:
    return [pub.encrypt(float(x)) for x in xs]


def veil_encrypt(kp: PaillierKeyPair, xs: np.ndarray) -> Any:
    return kp.public_key.encrypt(xs, precision_bits=32, max_abs=1000)


def veil_encrypt_crt(kp: PaillierKeyPair, xs: np.ndarray) -> Any:
    return kp.encrypt(xs, precision_bits=32, max_abs=1000)


def phe_aggregate(pub: Any, priv: Any, parties: np.ndarray) -> list[float]:
    enc = [[pub.encrypt(float(x)) for x in row] for row in parties]
    total = enc[0]
    for row in enc[1:]:
        total = [a + b for a, b in zip(total, row)]
    return [priv.decrypt(e) for e in total]


def veil_aggregate(kp: PaillierKeyPair, parties: np.ndarray) -> np.ndarray:
    pk = kp.public_key
    enc = [
        pk.encrypt_packed(row, precision_bits=16, max_addends=PARTIES, max_abs=1000)
        for row in parties
    ]
    total = enc[0]
    for e in enc[1:]:
        total = total + e
    return kp.decrypt(total)


def phe_decrypt(priv: Any, cts: list[Any]) -> list[float]:
    return [priv.decrypt(e) for e in cts]


def veil_decrypt(kp: PaillierKeyPair, v: Any) -> np.ndarray:
    return kp.decrypt(v)


# ----------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def keys() -> tuple[PaillierKeyPair, Any, Any]:
    kp, pub, priv = _keys(BITS)
    veil_encrypt(kp, _data(64))  # build the fixed-base tables outside the timing
    veil_encrypt_crt(kp, _data(64))
    return kp, pub, priv


def _run(benchmark: Any, fn: Callable[[], Any]) -> Any:
    return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="paillier-encrypt-64")
def test_encrypt_phe(benchmark: Any, keys: tuple) -> None:
    _run(benchmark, lambda: phe_encrypt(keys[1], _data(N_ENC)))


@pytest.mark.benchmark(group="paillier-encrypt-64")
def test_encrypt_veil(benchmark: Any, keys: tuple) -> None:
    _run(benchmark, lambda: veil_encrypt(keys[0], _data(N_ENC)))


@pytest.mark.benchmark(group="paillier-encrypt-64")
def test_encrypt_veil_crt(benchmark: Any, keys: tuple) -> None:
    _run(benchmark, lambda: veil_encrypt_crt(keys[0], _data(N_ENC)))


@pytest.mark.benchmark(group="paillier-aggregate-per-party-vector")
def test_aggregate_phe(benchmark: Any, keys: tuple) -> None:
    parties = _data(PARTIES * AGG_PHE).reshape(PARTIES, AGG_PHE)
    _run(benchmark, lambda: phe_aggregate(keys[1], keys[2], parties))


@pytest.mark.benchmark(group="paillier-aggregate-per-party-vector")
def test_aggregate_veil_packed(benchmark: Any, keys: tuple) -> None:
    parties = _data(PARTIES * AGG_VEIL).reshape(PARTIES, AGG_VEIL)
    out = _run(benchmark, lambda: veil_aggregate(keys[0], parties))
    np.testing.assert_allclose(out, parties.sum(axis=0), atol=PARTIES * 2**-16)


@pytest.mark.benchmark(group="paillier-decrypt-64")
def test_decrypt_phe(benchmark: Any, keys: tuple) -> None:
    cts = phe_encrypt(keys[1], _data(N_ENC))
    _run(benchmark, lambda: phe_decrypt(keys[2], cts))


@pytest.mark.benchmark(group="paillier-decrypt-64")
def test_decrypt_veil(benchmark: Any, keys: tuple) -> None:
    v = veil_encrypt(keys[0], _data(N_ENC))
    _run(benchmark, lambda: veil_decrypt(keys[0], v))


# ----------------------------------------------------------------- script: ratios
def _best(fn: Callable[[], Any], rounds: int) -> float:
    return _pair(fn, lambda: None, rounds)[0]


def _pair(a: Callable[[], Any], b: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Best time of ``a`` and of ``b`` over ``rounds`` alternating runs (robust to load drift)."""
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=BITS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="also time encrypt(workers=K)")
    args = ap.parse_args()
    r = args.rounds
    t0 = time.perf_counter()
    kp, pub, priv = _keys(args.bits)
    print(f"keygen {args.bits} bits: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    veil_encrypt(kp, _data(64))
    t_table = time.perf_counter() - t0
    t0 = time.perf_counter()
    veil_encrypt_crt(kp, _data(64))
    print(f"one-off tables: public {t_table:.2f} s, CRT {time.perf_counter() - t0:.2f} s")

    xs = _data(N_ENC)
    rows = []
    t_phe, t_veil = (t / N_ENC for t in _pair(lambda: phe_encrypt(pub, xs),
                                               lambda: veil_encrypt(kp, xs), r))
    t_phe2, t_crt = (t / N_ENC for t in _pair(lambda: phe_encrypt(pub, xs),
                                               lambda: veil_encrypt_crt(kp, xs), r))
    rows.append(("encrypt (public key), per value", t_phe, t_veil))
    rows.append(("encrypt (key holder, CRT), per value", t_phe2, t_crt))
    if args.workers > 1:
        big = _data(4096)
        t_ser, t_par = (t / big.size for t in _pair(
            lambda: kp.public_key.encrypt(big, precision_bits=32, max_abs=1000),
            lambda: kp.public_key.encrypt(big, precision_bits=32, max_abs=1000,
                                          workers=args.workers), 1))
        rows.append((f"encrypt 4096, workers={args.workers} vs Veil serial", t_ser, t_par))
    cts = phe_encrypt(pub, xs)
    v = veil_encrypt(kp, xs)
    t_phe_d, t_veil_d = (t / N_ENC for t in _pair(lambda: phe_decrypt(priv, cts),
                                                   lambda: veil_decrypt(kp, v), r))
    rows.append(("decrypt, per value", t_phe_d, t_veil_d))
    if args.workers > 1:
        vb = veil_encrypt(kp, _data(256))
        t_ser, t_par = (t / vb.size for t in _pair(
            lambda: kp.decrypt(vb), lambda: kp.decrypt(vb, workers=args.workers), 1))
        rows.append((f"decrypt 256, workers={args.workers} vs Veil serial", t_ser, t_par))
    p_phe = _data(PARTIES * AGG_PHE).reshape(PARTIES, AGG_PHE)
    p_veil = _data(PARTIES * AGG_VEIL).reshape(PARTIES, AGG_VEIL)
    a_phe, a_veil = _pair(lambda: phe_aggregate(pub, priv, p_phe),
                          lambda: veil_aggregate(kp, p_veil), 2)
    a_phe, a_veil = a_phe / AGG_PHE, a_veil / AGG_VEIL
    rows.append((f"aggregate {PARTIES} parties (packed), per value", a_phe, a_veil))
    print(f"\n{'operation (baseline: phe unless named)':48s} {'baseline':>10s} {'Veil':>10s} "
          f"{'speed-up':>9s}")
    for name, a, b in rows:
        print(f"{name:48s} {a * 1e3:8.3f}ms {b * 1e3:8.3f}ms {a / b:8.1f}x")
    print(
        f"\naggregation throughput: phe {1 / a_phe:,.0f} values/s, "
        f"Veil {1 / a_veil:,.0f} values/s"
    )
    print(f"(best of {r} alternating rounds, aggregation 2; pytest-benchmark shows the spread)")


if __name__ == "__main__":
    main()
