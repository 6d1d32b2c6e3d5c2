"""The cost model ``models.plan`` uses to choose a single-sample layout.

Each candidate layout is counted in operations (rotations = key switches, plaintext products,
rescales, squares, client encryptions) and bytes (request, public context). Latency is
estimated from per-operation times measured with SEAL 4.1 on one core of a 2-core x86 server at
``N = 8192`` with 7 primes (rotation 7.5 ms, square with relinearization 10 ms, rescale 2 ms,
plaintext product 0.5 ms, encryption 3 ms), scaled by ring size (``N log N``) and by the number
of primes (linearly, squared for key switches). The estimate ranks layouts; measured times are
in ``benchmarks/bench_single_ckks.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cost", "packed_cost", "lanes_cost", "generic_cost", "batched_cost", "key_bytes",
           "ct_bytes", "latency_ms"]

_MS = {"rotate": 7.5, "square": 10.0, "rescale": 2.0, "mul_plain": 0.5, "encrypt": 3.0}
_TENSEAL_GALOIS = 2  # TenSEAL keys every power-of-two step in both directions


@dataclass
class Cost:
    """Operation counts, estimated latency and bytes of one layout for one parameter set."""

    layout: str
    ops: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    request_bytes: int = 0
    context_bytes: int = 0

    def describe(self) -> str:
        ops = ", ".join(f"{v} {k}" for k, v in self.ops.items() if v)
        return (f"{self.layout}: ~{self.latency_ms:.0f} ms ({ops}), request "
                f"{self.request_bytes / 1e6:.2f} MB, public context "
                f"{self.context_bytes / 1e6:.0f} MB")


def _scale(params: Any) -> tuple[float, float]:
    n = params.poly_modulus_degree
    ring = n / 8192 * (1 + 0.08 * math.log2(n / 8192))
    primes = len(params.coeff_mod_bit_sizes) / 7
    return ring * primes, ring * primes * primes


def _latency(ops: dict[str, int], params: Any) -> float:
    lin, sq = _scale(params)
    return sum(_MS[k] * v * (sq if k in ("rotate", "square") else lin) for k, v in ops.items())


def latency_ms(ops: dict[str, int], params: Any) -> float:
    """Estimated milliseconds of ``ops`` (``rotate``, ``square``, ``rescale``, ``mul_plain``,
    ``encrypt`` counts) under ``params``: per-operation times measured at N=8192 with 7 primes,
    scaled by ring ``N log N`` and the prime count (squared for key switches)."""
    return _latency(ops, params)


def batched_cost(stages: Any, params: Any, features: int, galois_keys: bool) -> Cost:
    """The batched layout (one ciphertext per input feature, a row per slot) of a plan whose
    public ``stages`` are ``(kind, layers, size_in, size_out, depth)``: one plaintext product
    per weight, squarings for polynomial activations."""
    ops = {"mul_plain": 0, "rescale": 0, "square": 0, "encrypt": features}
    for kind, _layers, size_in, size_out, depth in stages:
        if kind == "poly":
            ops["square"] += size_out * max(1, depth)
            ops["mul_plain"] += size_out * (max(1, depth) + 1)
            ops["rescale"] += size_out * max(1, depth)
        else:  # affine (and im2col windows): one plaintext product per weight
            ops["mul_plain"] += size_in * size_out
            ops["rescale"] += size_out
    galois = 2 * int(math.log2(params.slots)) if galois_keys else 0
    return Cost("batched", ops, _latency(ops, params), features * ct_bytes(params, False),
                (2 + galois) * key_bytes(params, False))


def _packing(bits: Any) -> float:
    """SEAL's zstd keeps about (bits + 10) of each 64-bit word (measured)."""
    return min(1.0, (sum(bits) / len(bits) + 10) / 64)


def key_bytes(params: Any, seeded: bool) -> int:
    """One key-switching key (Galois or relinearization), serialized and compressed."""
    bits = params.coeff_mod_bit_sizes
    n, primes = params.poly_modulus_degree, len(bits)
    return int((1 if seeded else 2) * _packing(bits) * (primes - 1) * n * primes * 8)


def ct_bytes(params: Any, seeded: bool) -> int:
    """One fresh ciphertext, serialized (seeded symmetric encryption: half the size)."""
    bits = params.coeff_mod_bit_sizes[:-1]
    return int((1 if seeded else 2) * _packing(bits) * params.poly_modulus_degree * len(bits) * 8)


def packed_cost(spec: Any, params: Any) -> Cost:
    ops = {"rotate": 0, "square": 0, "rescale": 0, "mul_plain": 0, "encrypt": spec.client_cts}
    for m in spec.maps:
        ops["rotate"] += m.rotation_count(spec.slots)
        if m.mode == "gather":
            ops["mul_plain"] += spec.client_cts
        elif m.mode == "shared":
            ops["mul_plain"] += spec.client_cts * (spec.slots // m.baby)
        elif m.mode == "client-baby":
            ops["mul_plain"] += len(m.giants) * m.client_cts
        else:
            ops["mul_plain"] += len(m.diags)
        ops["rescale"] += 1 + (len(m.babies) if m.mode == "diagonal" else 0)
        ops["square"] += m.act.depth if m.act is not None else 0
    return Cost("packed", ops, _latency(ops, params), spec.client_cts * ct_bytes(params, True),
                (len(spec.rotations) + 1) * key_bytes(params, True))


def _tenseal_context(params: Any) -> int:
    keys = _TENSEAL_GALOIS * int(math.log2(params.slots)) + 1
    return keys * key_bytes(params, False)


def lanes_cost(spec: Any, params: Any) -> Cost:
    groups = len(spec.first) + len(spec.mix)
    ops = {"rotate": int(math.log2(max(1, spec.blocks))), "square": groups,
           "rescale": groups + 1 + len(spec.mix), "encrypt": spec.taps,
           "mul_plain": spec.taps * len(spec.first) + len(spec.mix) * len(spec.first) + 1}
    return Cost("taps", ops, _latency(ops, params), spec.taps * ct_bytes(params, False),
                _tenseal_context(params))


def generic_cost(stages: list[Any], params: Any) -> Cost:
    ops = {"rotate": 0, "square": 0, "rescale": 0, "mul_plain": 0, "encrypt": 1}
    for s in stages:
        if s.kind == "affine" and not s.data.get("identity"):
            ops["rotate"] += int(1.5 * s.in_size)  # TenSEAL: one rotation (NAF steps) per row
            ops["mul_plain"] += s.in_size
            ops["rescale"] += 1
        elif s.kind == "im2col":
            channels = len(s.data["kernels"])
            ops["rotate"] += channels * int(math.log2(max(2, params.slots // 64)))
            ops["mul_plain"] += channels
            ops["rescale"] += channels
        elif s.kind == "poly":
            ops["square"] += max(1, s.depth)
            ops["rescale"] += max(1, s.depth)
    return Cost("generic", ops, _latency(ops, params), ct_bytes(params, False),
                _tenseal_context(params))
