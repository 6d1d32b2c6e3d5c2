"""Low-latency single-sample CKKS layout ("taps") for small convolutional networks.

TenSEAL's vector x matrix product (the generic ``single`` layout) rotates once per input row,
about 10-30 ms per row here, so a CNN costs seconds. This layout needs no row rotations at all:
only element-wise work and one final block sum (``log2(blocks)`` rotations).

Models it takes (checked by :func:`analyze`; anything else uses the generic single layout):

* ``A0``: an affine map with *local* receptive fields whose output is ``(C1, *spatial)`` — a
  convolution (any stride/padding), possibly with folded BatchNorm or pooling;
* a quadratic activation ``a*y**2 + b*y + c`` (``a != 0``);
* optionally ``A1``, an affine map that mixes channels position by position — a 1x1
  convolution or BatchNorm — then a second quadratic activation;
* ``AL``: any affine map to the outputs (pooling, flatten, linear), at most ``lanes`` outputs.

Layout: one ciphertext of ``slots`` values is ``blocks`` blocks of ``lanes`` slots. Block ``i``
belongs to feature ``i`` of ``AL``'s input (a channel at a position); lane ``r`` of block ``i``
carries that feature's contribution to output ``r``. The client sends ``taps`` ciphertexts:
tap ``k`` holds, in every lane of block ``i``, the input value at the ``k``-th position of the
receptive field of feature ``i``'s position (0 outside the input) — public geometry, listed in
the plan's ``gather`` table. The server then computes everything slot-wise with plaintext
vectors, and finally ``out[r] = sum_i block_i[r]`` (:meth:`CKKSTensor.block_sum`).

Each quadratic activation costs one squaring: ``a*(y + d)**2 + k`` with ``sqrt|a|`` and ``d``
folded into the affine map before it and ``sign(a)``, ``k`` into the one after. ``AL``'s
weights are folded into the last square as ``sign(w) * (sqrt|w| * u)**2`` (two squares, one per
sign). Depth: 3 without ``A1``, 5 with it — ``N = 8192`` at 128-bit security.

What the server learns: nothing about the input (only ciphertexts). What the client learns: the
outputs and the public plan (sizes, receptive fields), as with the other layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.models.ckks.stages import ones_pattern
from veil.models.ckks.values import EncryptedValues
from veil.protocols.inference import PublicPlan

__all__ = ["LanesSpec", "analyze", "encode_taps", "LanesModel", "MAX_TAPS", "INTEGER_BITS"]

MAX_TAPS = 32  # client ciphertexts per sample before this layout stops paying off
INTEGER_BITS = 9  # outputs |y| < 512 (logits)


@dataclass
class LanesSpec:
    """A model lowered to the taps layout for ``slots`` slots (server side: holds weights)."""

    slots: int
    lanes: int
    taps: int
    n_in: int
    n_out: int
    depth: int
    gather: np.ndarray  # (blocks, taps) input index per block and tap, -1 = zero
    first: list[tuple[np.ndarray, np.ndarray]]  # per group: (taps x slots weights, bias)
    # per sign of the final square: (C1 x slots weights, bias); empty without a mixing layer
    mix: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    signs: tuple[int, ...] = (1, -1)  # sign of each final square (groups of first or mix)
    out_bias: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def blocks(self) -> int:
        return self.slots // self.lanes

    def encoding(self) -> dict[str, Any]:
        """The public input encoding clients need (geometry only, no weights)."""
        return {"kind": "taps", "taps": self.taps, "lanes": self.lanes, "outputs": self.n_out,
                "gather": self.gather.tolist()}


def _quadratic(stage: Any) -> tuple[float, float, float] | None:
    """(a, d, k) with p(y) = a*(y + d)**2 + k, or None when p is not a true quadratic."""
    c = list(stage.data["coeffs"])
    while c and c[-1] == 0.0:
        c.pop()
    if len(c) != 3:
        return None
    c0, c1, a = (float(v) for v in c)
    d = c1 / (2 * a)
    return a, d, c0 - a * d * d


def analyze(prog: Any, stages: list[Any], shapes: dict[str, tuple[int, ...]],
            slots: int) -> LanesSpec | str:
    """Lower ``stages`` (from ``lower(prog, 'batched')``) to the taps layout, or say why not."""
    kinds = [s.kind for s in stages]
    if kinds not in (["affine", "poly", "affine"], ["affine", "poly", "affine", "poly", "affine"]):
        return f"stage pattern {kinds} is not affine-poly-[affine-poly]-affine"
    for prev, s in zip(stages, stages[1:]):
        if s.inputs != (prev.name,):
            return "the network is not a chain"
    if stages[0].inputs != (prog.input_name,):
        return "the first stage does not read the input"
    quads = [_quadratic(s) for s in stages if s.kind == "poly"]
    if any(q is None for q in quads):
        return "activations must be quadratic (degree 2) for the taps layout"
    a0, al = stages[0], stages[-1]
    n_in = math.prod(prog.input_shape)
    n_out = al.out_size
    lanes = 1 << max(0, (n_out - 1).bit_length())
    blocks = slots // lanes
    out0 = shapes[a0.name]
    c1, pos = out0[0], math.prod(out0[1:])
    feats = al.in_size
    if feats > blocks or lanes > slots:
        return f"{feats} features x {lanes} lanes exceed {slots} slots"
    m0, b0 = a0.data["matrix"], a0.data["bias"]
    pattern = ones_pattern(a0, tuple(prog.input_shape))  # (n_in, C1*pos)
    fields = [np.flatnonzero(pattern[:, [c * pos + p for c in range(c1)]].any(axis=1))
              for p in range(pos)]
    taps = max(len(f) for f in fields)
    if taps > MAX_TAPS:
        return f"the first layer's receptive field has {taps} inputs (> {MAX_TAPS})"
    mid = stages[2] if len(stages) == 5 else None
    if mid is not None:
        out1 = shapes[mid.name]
        if len(out1) < 2 or math.prod(out1[1:]) != pos or mid.in_size != c1 * pos:
            return "the middle affine map does not keep the spatial grid"
        m1 = mid.data["matrix"].reshape(c1, pos, out1[0], pos)
        off = m1.copy()
        for p in range(pos):
            off[:, p, :, p] = 0
        if np.any(off):
            return "the middle affine map mixes positions (only 1x1 convolutions qualify)"
    # feature i of AL's input -> its position
    feat_pos = np.arange(feats) % pos
    gather = -np.ones((blocks, taps), dtype=np.int64)
    for i in range(feats):
        f = fields[feat_pos[i]]
        gather[i, : len(f)] = f
    return _weights(stages, quads, m0, b0, gather, feat_pos, c1, pos, lanes, slots, n_in,
                    n_out, mid)


def _weights(stages: list[Any], quads: list[Any], m0: np.ndarray, b0: np.ndarray,
             gather: np.ndarray, feat_pos: np.ndarray, c1: int, pos: int, lanes: int,
             slots: int, n_in: int, n_out: int, mid: Any) -> LanesSpec:
    blocks, taps = gather.shape
    feats = feat_pos.size
    al = stages[-1]
    ml = np.zeros((blocks, lanes))
    ml[:feats, :n_out] = al.data["matrix"]
    a_last, d_last, k_last = quads[-1]
    scaled = a_last * ml
    t = np.sqrt(np.abs(scaled))
    masks = {1: scaled > 0, -1: scaled < 0}
    signs = tuple(s for s in (1, -1) if masks[s].any()) or (1,)
    out_bias = np.zeros(lanes)
    out_bias[:n_out] = al.data["bias"]
    out_bias += k_last * ml.sum(axis=0)

    def tap_weight(column: np.ndarray) -> np.ndarray:
        """(blocks, taps) weights of A0 output ``column[i]`` (a column index per block)."""
        w = np.zeros((blocks, taps))
        for i in range(feats):
            idx = gather[i][gather[i] >= 0]
            w[i, : idx.size] = m0[idx, column[i]]
        return w

    if mid is None:  # AL's input is the first activation: fold AL into its square
        col = np.arange(feats)
        w = tap_weight(np.pad(col, (0, blocks - feats)))
        bias = np.zeros(blocks)
        bias[:feats] = b0[:feats] + d_last
        first = []
        for s in signs:
            g = t * masks[s]  # (blocks, lanes)
            wk = np.stack([(g * w[:, k : k + 1]).reshape(-1) for k in range(taps)])
            first.append((wk, (g * bias[:, None]).reshape(-1)))
        return LanesSpec(slots, lanes, taps, n_in, n_out, 3, gather, first, [], signs,
                         out_bias)
    a1, d1, k1 = quads[0]
    r1 = math.sqrt(abs(a1))
    first = []
    for c in range(c1):
        col = np.pad(c * pos + feat_pos, (0, blocks - feats))
        w = tap_weight(col) * r1
        bias = np.zeros(blocks)
        bias[:feats] = r1 * (b0[c * pos + feat_pos] + d1)
        first.append((np.stack([np.repeat(w[:, k], lanes) for k in range(taps)]),
                      np.repeat(bias, lanes)))
    m1, b1 = mid.data["matrix"], mid.data["bias"]  # (c1*pos, feats), (feats,)
    w1 = np.zeros((c1, blocks))
    for c in range(c1):
        w1[c, :feats] = m1[c * pos + feat_pos, np.arange(feats)]
    z_bias = np.zeros(blocks)
    z_bias[:feats] = b1 + k1 * w1[:, :feats].sum(axis=0) + d_last
    mix = []
    for s in signs:
        g = t * masks[s]
        vc = np.stack([(g * (np.sign(a1) * w1[c])[:, None]).reshape(-1) for c in range(c1)])
        mix.append((vc, (g * z_bias[:, None]).reshape(-1)))
    return LanesSpec(slots, lanes, taps, n_in, n_out, 5, gather, first, mix, signs, out_bias)


def encode_taps(x: np.ndarray, encoding: dict[str, Any], slots: int) -> list[np.ndarray]:
    """Client: the ``taps`` slot vectors of one flattened input ``x``."""
    gather = np.asarray(encoding["gather"], dtype=np.int64)
    lanes, taps = int(encoding["lanes"]), int(encoding["taps"])
    if gather.shape != (slots // lanes, taps) or gather.max() >= x.size or gather.min() < -1:
        raise ConfigurationError(
            f"taps encoding: gather table of shape {gather.shape} does not fit {slots} slots, "
            f"{lanes} lanes and an input of {x.size} values; encrypt with the plan of the "
            "context's parameters"
        )
    ext = np.append(np.asarray(x, dtype=np.float64).reshape(-1), 0.0)
    vals = ext[gather]  # -1 -> the appended zero
    return [np.repeat(vals[:, k], lanes) for k in range(taps)]


class LanesModel:
    """Server side of the taps layout: call it on ``EncryptedValues`` of ``taps`` tensors."""

    layout = "single"

    def __init__(self, spec: LanesSpec, ctx: Any, public: PublicPlan, n_in: int) -> None:
        self._spec, self._ctx, self._public = spec, ctx, public
        self.depth = spec.depth
        self.input_size = n_in

    def public(self) -> PublicPlan:
        """The public plan clients encrypt with."""
        return self._public

    def __call__(self, enc: EncryptedValues) -> EncryptedValues:
        sp = self._spec
        if not isinstance(enc, EncryptedValues) or enc.layout != "single":
            raise ConfigurationError(
                "expected single-layout EncryptedValues from models.encrypt_input with this "
                "model's public()"
            )
        if len(enc.tensors) != sp.taps or any(t.size != sp.slots for t in enc.tensors):
            raise ConfigurationError(
                f"this model expects {sp.taps} tap ciphertexts of {sp.slots} values (taps "
                f"encoding); got {len(enc.tensors)} of sizes {[t.size for t in enc.tensors][:4]}"
            )
        xs = enc.tensors
        # TenSEAL resets the scale to 2**scale_bits after dividing by a prime p, so every
        # multiplication at level l scales its result by r(l) = 2**scale_bits / p_l (|r - 1| ~
        # 1e-4). The factors are public and exact: divide them out of the next plaintext
        # weights, so the outputs carry no systematic error.
        params = self._ctx.params
        level = min(t.levels_left for t in xs)

        def r(lv: int) -> float:
            return 2.0**params.scale_bits / params.primes[lv]

        def affine(ins: list[Any], weights: np.ndarray, bias: np.ndarray, gain: float) -> Any:
            acc = None
            for t, w in zip(ins, weights):
                if not w.any():
                    continue
                term = t * (w * gain)
                acc = term if acc is None else acc + term
            if acc is None:
                acc = ins[0] * weights[0]
            return acc + bias

        if sp.mix:
            hs = [affine(xs, w, b, 1 / r(level)).square() for w, b in sp.first]
            gain = 1 / (r(level - 1) * r(level - 2))
            finals = [affine(hs, w, b, gain).square() for w, b in sp.mix]
            last = 1 / (r(level - 3) * r(level - 4))
        else:
            finals = [affine(xs, w, b, 1 / r(level)).square() for w, b in sp.first]
            last = 1 / (r(level - 1) * r(level - 2))
        total = finals[0] if sp.signs[0] > 0 else -finals[0]
        for s, f in zip(sp.signs[1:], finals[1:]):
            total = total + f if s > 0 else total - f
        out = total.block_sum(np.full(sp.blocks, last), sp.lanes) + sp.out_bias
        return EncryptedValues("single", 1, [out], 0, outputs=sp.n_out)
