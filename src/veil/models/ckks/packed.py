"""The packed single-sample CKKS layout: one ciphertext per layer, rotations with chosen keys.

Models it takes: a chain ``A0 -> p1 -> A1 -> p2 -> ... -> AL`` of affine maps (linear, conv
with any kernel/stride/padding, average pooling, folded BatchNorm, flatten) and polynomial
activations of degree 2 to 4 (:mod:`veil.models.ckks.packact`: a quadratic costs one squaring,
``a*(y + d)**2 + k`` with ``sqrt|a|`` and ``d`` folded into the map before it and ``sign(a)``,
``k`` into the map after it; degrees 3 and 4 two levels). Depth = maps + activation levels.

Slot layout: a vector of ``n`` features lives in one ciphertext of ``S`` slots **replicated with
period** ``P = next_pow2(n)`` (``S / P`` copies; padding slots are zero). Each map keeps that
form, so no masking level is ever needed:

* **gather** (first map with small receptive fields, e.g. a convolution): the client sends
  ``T = ceil(K / G)`` ciphertexts, ``G = S / P1`` tap groups of ``P1`` slots; slot ``(g, j)`` of
  ciphertext ``t`` holds the input at tap ``t*G + g`` of output ``j``'s receptive field (public
  geometry, the plan's ``gather`` table). The server multiplies by the weights and folds the
  groups with ``log2 G`` rotations: output ``j`` in every period.
* **diagonals** (dense maps, Halevi-Shoup with baby-step giant-step, hybrid for rectangular
  matrices): ``D = min(P_in, P_out)`` generalized diagonals, ``b * g = D``; baby steps are
  rotations by ``1`` of the input, giant steps Horner-style rotations by ``b``, then
  ``log2(P_in / P_out)`` folding rotations when the map shrinks. For a dense *first* map the
  client sends the ``b`` baby-step rotations of its input itself (``T = b`` ciphertexts).

Noise discipline: every rotation happens on a ciphertext *before* its rescale (scale about
``Delta**2``), where SEAL's key-switching noise (about ``1e-3`` at ``Delta = 2**28`` with a 38-bit
special prime) is divided away; every plaintext is encoded at the scale that brings its product
back to exactly ``Delta`` after one rescale. Galois keys: only the steps listed in
:attr:`PackedSpec.rotations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.models.ckks.packact import Act
from veil.models.ckks.packact import fold as fold_activation
from veil.models.ckks.stages import Stage

__all__ = ["PackedSpec", "MapStep", "analyze", "pow2", "MAX_TAPS_CTS"]

MAX_TAPS_CTS = 16  # client ciphertexts for the first map before the layout stops paying off


def pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass
class MapStep:
    """One affine map of the packed layout (``weights``/``bias`` are server-side only).

    Diagonal modes use the generalized diagonals ``d = c * baby + a`` listed in ``diags``
    (nonzero in the architecture's pattern: public); ``babies`` / ``giants`` are the ``a`` and
    ``c`` values they use. Baby steps are rotations by 1 in sequence (``seq``) or one rotation
    each by ``a``; giant steps Horner-style rotations by ``baby`` (``horner``) or one each by
    ``c * baby``.
    """

    mode: str  # "gather" | "shared" | "client-baby" | "diagonal"
    n_in: int
    n_out: int
    p_in: int  # input period (diagonal modes)
    p_out: int  # output period
    baby: int = 1  # b
    diags: tuple[int, ...] = ()
    copies: int = 1  # client-baby: baby steps packed per client ciphertext (one per period)
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n_out, n_in)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pattern: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    act: Act | None = None  # the (folded) activation after this map, if any
    layers: str = ""  # the source layers, for messages

    @property
    def square_after(self) -> bool:
        return self.act is not None

    @property
    def babies(self) -> tuple[int, ...]:
        return tuple(sorted({d % self.baby for d in self.diags}))

    @property
    def giants(self) -> tuple[int, ...]:
        return tuple(sorted({d // self.baby for d in self.diags}))

    @property
    def seq(self) -> bool:
        a = self.babies
        return bool(a) and a[-1] <= len([v for v in a if v])

    @property
    def horner(self) -> bool:
        c = self.giants
        return bool(c) and c[-1] <= len([v for v in c if v])

    @property
    def folds(self) -> int:
        return int(math.log2(self.p_in // self.p_out)) if self.p_in > self.p_out else 0

    @property
    def client_cts(self) -> int:
        return -(-len(self.babies) // self.copies)

    def fold_steps(self, slots: int) -> list[int]:
        """Rotation steps of the final folds: the tap groups (gather), the copies that carry
        different baby steps (client-baby), then the shrinking of a period (diagonal)."""
        if self.mode == "gather":
            return [self.p_out << k for k in range(int(math.log2(slots // self.p_out)))]
        if self.mode == "shared":
            return []
        copies = [self.p_in << k for k in range(int(math.log2(self.copies)))]
        return copies + [self.p_out << k for k in range(self.folds)]

    def baby_rotations(self) -> int:
        if self.mode != "diagonal" or not self.babies:
            return 0
        return self.babies[-1] if self.seq else len([a for a in self.babies if a])

    def giant_rotations(self) -> int:
        if self.mode == "shared":
            return 0  # set by the spec: one block rotation per group (see rotation_count)
        if self.mode == "gather" or not self.giants:
            return 0
        return self.giants[-1] if self.horner else len([c for c in self.giants if c])

    def rotation_count(self, slots: int) -> int:
        if self.mode == "shared":
            return slots // self.baby - 1
        return self.baby_rotations() + self.giant_rotations() + len(self.fold_steps(slots))

    def steps(self, slots: int) -> set[int]:
        if self.mode == "shared":
            return {self.baby} if slots // self.baby > 1 else set()
        out = set(self.fold_steps(slots))
        if self.mode == "diagonal" and self.baby_rotations():
            out |= {1} if self.seq else {a for a in self.babies if a}
        if self.giant_rotations():
            out |= {self.baby} if self.horner else {c * self.baby for c in self.giants if c}
        return out


@dataclass
class PackedSpec:
    """A model lowered to the packed layout for ``slots`` slots."""

    slots: int
    n_in: int
    n_out: int
    maps: list[MapStep]
    gather: np.ndarray | None  # (n_out0, K) input index per output and tap, -1 = zero
    taps: int  # K
    client_cts: int

    @property
    def depth(self) -> int:
        return len(self.maps) + sum(m.act.depth for m in self.maps if m.act is not None)

    @property
    def rotations(self) -> tuple[int, ...]:
        steps: set[int] = set()
        for m in self.maps:
            steps |= m.steps(self.slots)
        return tuple(sorted(s % self.slots for s in steps if s % self.slots))

    def encoding(self) -> dict[str, Any]:
        """The public input encoding clients need (geometry only, no weights)."""
        first = self.maps[0]
        enc: dict[str, Any] = {"kind": "packed", "mode": first.mode, "ciphertexts":
                               self.client_cts, "outputs": self.n_out, "slots": self.slots,
                               "period": first.p_out if first.mode == "gather" else
                               first.baby if first.mode == "shared" else first.p_in,
                               "copies": first.copies, "babies": list(first.babies),
                               "rotations": list(self.rotations)}
        if self.gather is not None:
            enc["gather"] = self.gather.tolist()
        return enc


def _fold(stages: list[Stage]) -> list[MapStep] | str:
    """The chain's maps with every quadratic folded (``W`` as ``(n_out, n_in)``)."""
    kinds = [s.kind for s in stages]
    if not kinds or kinds[0] != "affine" or kinds[-1] != "affine" or any(
            k != ("affine" if i % 2 == 0 else "poly") for i, k in enumerate(kinds)):
        return f"stage pattern {kinds} is not affine-(poly-affine)*"
    for prev, s in zip(stages, stages[1:]):
        if s.inputs != (prev.name,):
            return "the network is not a chain"
    maps: list[MapStep] = []
    prev: Act | None = None
    for i in range(0, len(stages), 2):
        st = stages[i]
        w = np.asarray(st.data["matrix"], dtype=np.float64).T.copy()
        b = np.asarray(st.data["bias"], dtype=np.float64).copy()
        if prev is not None:  # the previous activation's factor and constant
            b = b + prev.const * w.sum(axis=1)
            w = prev.factor * w
        m = MapStep("diagonal", w.shape[1], w.shape[0], 0, 0, weights=w, bias=b,
                    layers=st.layers)
        if i + 1 < len(stages):
            act = fold_activation(stages[i + 1].data["coeffs"])
            if isinstance(act, str):
                return f"{stages[i + 1].layers}: {act}"
            m.weights, m.bias = act.gain * w, act.gain * (b + act.shift)
            m.act = prev = act
        maps.append(m)
    return maps


def _diag_set(pattern: np.ndarray, p_in: int, p_out: int) -> tuple[int, ...]:
    """Generalized diagonals ``d < min(P_in, P_out)`` with a nonzero entry in ``pattern``."""
    big, count = max(p_in, p_out), min(p_in, p_out)
    pat = np.zeros((p_out, p_in), dtype=bool)
    pat[: pattern.shape[0], : pattern.shape[1]] = pattern
    s = np.arange(big)
    return tuple(d for d in range(count) if pat[s % p_out, (s + d) % p_in].any())


def _choose_baby(m: MapStep, client_copies: int = 0) -> int:
    """The power-of-two ``b`` with the fewest rotations for the map's diagonals (for a client-side
    first map: rotations plus client ciphertexts, within :data:`MAX_TAPS_CTS`)."""
    count = min(m.p_in, m.p_out)

    def cost(b: int) -> float:
        m.baby = b
        if client_copies:
            cts = -(-len(m.babies) // client_copies)
            return math.inf if cts > MAX_TAPS_CTS else m.giant_rotations() + 2 * cts
        keys = (0 if m.seq else len(m.babies)) + (0 if m.horner else len(m.giants))
        return m.baby_rotations() + m.giant_rotations() + 0.05 * keys

    best = min((1 << k for k in range(int(math.log2(count)) + 1)), key=cost)
    m.baby = best
    return best


def analyze(stages: list[Stage], n_in: int, slots: int,
            patterns: list[np.ndarray] | None = None) -> PackedSpec | str:
    """Lower ``stages`` (from ``lower(prog, 'batched')``) to the packed layout, or say why not.

    ``patterns``: each map's nonzero pattern ``(n_out, n_in)`` computed with every weight set to
    one (public geometry: zero weights do not change receptive fields, diagonals or keys).
    """
    maps = _fold(stages)
    if isinstance(maps, str):
        return maps
    for i, m in enumerate(maps):
        m.p_out = pow2(m.n_out)
        m.pattern = patterns[i] if patterns is not None else m.weights != 0
        if m.p_out > slots:
            return f"a map with {m.n_out} outputs exceeds the {slots} slots"
    first = maps[0]
    fields = [np.flatnonzero(row) for row in first.pattern]
    taps = max((len(f) for f in fields), default=0)
    groups = slots // first.p_out
    gather_cts = -(-taps // groups)
    p0 = pow2(n_in)
    baby_ok = p0 <= slots
    copies = slots // p0 if baby_ok and first.p_out <= p0 else 1
    baby_cts = MAX_TAPS_CTS + 1
    if baby_ok:
        first.mode, first.p_in = "client-baby", p0
        first.diags = _diag_set(first.pattern, p0, first.p_out)
        _choose_baby(first, copies)
        first.copies = max(1, min(copies, pow2(len(first.babies))))
        baby_cts = first.client_cts
    shared = _shared_geometry(first, fields, slots) if len(maps) > 1 else None
    options = {"gather": (gather_cts, math.log2(groups)),
               "client-baby": (baby_cts, first.rotation_count(slots) if baby_ok else 0)}
    if shared is not None:
        options["shared"] = (shared[4], slots // shared[3] - 1)
    usable = {k: v for k, v in options.items() if v[0] <= MAX_TAPS_CTS}
    if not usable:
        return ("the first map needs "
                + ", ".join(f"{v[0]} client ciphertexts ({k})" for k, v in options.items())
                + f" (> {MAX_TAPS_CTS})")
    mode = min(usable, key=lambda k: usable[k][1] + 2 * usable[k][0])
    gather = None
    if mode == "gather":
        first.mode, first.p_in = "gather", p0
        gather = _table(fields, range(first.n_out), taps)
        client = gather_cts
    elif mode == "shared":
        gather, client = _use_shared(maps, shared, taps, p0)
    else:
        client = first.client_cts
    for prev, m in zip(maps, maps[1:]):
        m.p_in = prev.p_out
        m.diags = _diag_set(m.pattern, m.p_in, m.p_out)
        if not m.diags:
            return f"{m.layers}: the map has no nonzero weights"
        _choose_baby(m)
    return PackedSpec(slots, n_in, maps[-1].n_out, maps, gather, taps, client)


def _table(fields: list[np.ndarray], rows: Any, taps: int) -> np.ndarray:
    """Gather table: the input index of each tap of each listed row's field (-1 = zero)."""
    rows = list(rows)
    out = -np.ones((len(rows), taps), dtype=np.int64)
    for i, j in enumerate(rows):
        out[i, : len(fields[j])] = fields[j]
    return out


def _shared_geometry(first: MapStep, fields: list[np.ndarray], slots: int) -> Any:
    """``(channels, positions, C', P', client cts)`` when the first map is convolution-like:
    output ``c * positions + p`` has the same receptive field for every channel ``c``."""
    n = first.n_out
    for positions in range(1, n + 1):
        if n % positions or positions == n:
            continue
        channels = n // positions
        if all(np.array_equal(fields[c * positions + p], fields[p])
               for c in range(1, channels) for p in range(positions)):
            cp, pp = pow2(channels), pow2(positions)
            if cp * pp > slots:
                return None
            taps = max((len(f) for f in fields[:positions]), default=0)
            return channels, positions, cp, pp, -(-taps // (slots // pp))
    return None


def _use_shared(maps: list[MapStep], shared: Any, taps: int, p0: int) -> tuple[np.ndarray, int]:
    """Switch the first map to the shared mode: outputs in slot order ``c * P' + p`` (the next
    map's columns follow), the client gathering one field per position."""
    channels, positions, cp, pp, cts = shared
    first, nxt = maps[0], maps[1]
    order = np.array([c * pp + p for c in range(channels) for p in range(positions)])
    size = cp * pp

    def rows(a: np.ndarray) -> np.ndarray:
        out = np.zeros((size, *a.shape[1:]), dtype=a.dtype)
        out[order] = a
        return out

    def cols(a: np.ndarray) -> np.ndarray:
        out = np.zeros((a.shape[0], size), dtype=a.dtype)
        out[:, order] = a
        return out

    fields = [np.flatnonzero(r) for r in first.pattern[:positions]]
    first.weights, first.bias, first.pattern = rows(first.weights), rows(first.bias), \
        rows(first.pattern)
    first.mode, first.p_in, first.n_out, first.p_out = "shared", p0, size, size
    first.baby = pp  # the giant step: one position block
    first.copies = cp  # channel blocks per period
    nxt.weights, nxt.pattern, nxt.n_in = cols(nxt.weights), cols(nxt.pattern), size
    return _table(fields, range(positions), taps), cts


def shared_plaintexts(m: MapStep, gather: np.ndarray, slots: int,
                      ) -> list[tuple[int, int, np.ndarray]]:
    """``(delta, t, vector)``: block rotation ``delta`` (by ``delta * P'``) of client ciphertext
    ``t``; group ``g`` of ``t`` holds tap ``t * G + g`` of every position, and output block
    ``b`` (channel ``b mod C'``) collects group ``b + delta``."""
    pp, cp = m.baby, m.copies
    groups = slots // pp
    positions, taps = gather.shape
    out = []
    for delta in range(groups):
        for t in range(-(-taps // groups)):
            vec = np.zeros(slots)
            for g in range(groups):
                k = t * groups + g
                if k >= taps:
                    break
                c = (g - delta) % groups % cp
                idx = gather[:, k]
                ok = idx >= 0
                rows = c * pp + np.arange(positions)
                vec[g * pp : g * pp + positions][ok] = m.weights[rows[ok], idx[ok]]
            if vec.any():
                out.append((delta, t, vec))
    return out


def diagonal_plaintexts(m: MapStep, slots: int) -> list[tuple[int, int, np.ndarray]]:
    """``(c, a, vector)`` for each nonzero generalized diagonal ``d = c*b + a`` of map ``m``,
    pre-rotated by ``-c*b`` and replicated over ``slots`` (the plaintexts of the BSGS product).

    ``D_d[s] = W[s mod P_out, (s + d) mod P_in]`` for ``s`` in one period ``L = max(P_in,
    P_out)``; rows beyond ``n_out`` and columns beyond ``n_in`` are zero.
    """
    p_in, p_out = m.p_in, m.p_out
    big = max(p_in, p_out)
    w = np.zeros((p_out, p_in))
    w[: m.n_out, : m.n_in] = m.weights
    s = np.arange(big)
    out = []
    for d in m.diags:
        c, a = divmod(d, m.baby)
        diag = w[s % p_out, (s + d) % p_in]
        if diag.any():
            out.append((c, a, np.roll(np.tile(diag, slots // big), c * m.baby)))
    return out


def client_baby_plaintexts(m: MapStep, slots: int) -> list[tuple[int, int, np.ndarray]]:
    """``(c, t, vector)``: the diagonals of giant step ``c`` for client ciphertext ``t``.

    With several copies (a shrinking or square first map), copy ``r`` of ciphertext ``t``
    carries baby step ``a = t * copies + r`` and the plaintext holds that step's diagonal in the
    same copy (one period each); a fold over the copies at the end sums them.
    """
    index = {a: i for i, a in enumerate(m.babies)}  # baby a -> (ciphertext, copy)
    if m.copies == 1:
        return [(c, index[a], v) for c, a, v in diagonal_plaintexts(m, slots)]
    block = m.copies * m.p_in  # the used copies, replicated over the slots
    vecs: dict[tuple[int, int], np.ndarray] = {}
    for c, a, v in diagonal_plaintexts(m, m.p_in):
        t, r = divmod(index[a], m.copies)
        vecs.setdefault((c, t), np.zeros(block))[r * m.p_in : (r + 1) * m.p_in] = v
    return [(c, t, np.tile(v, slots // block)) for (c, t), v in sorted(vecs.items())]


def gather_plaintexts(m: MapStep, gather: np.ndarray, slots: int) -> list[np.ndarray]:
    """The weight vector of each client ciphertext of a gather map (slot ``(g, j)``)."""
    groups = slots // m.p_out
    taps = gather.shape[1]
    cts = -(-taps // groups)
    out = []
    for t in range(cts):
        vec = np.zeros(slots)
        for g in range(groups):
            k = t * groups + g
            if k >= taps:
                break
            idx = gather[:, k]
            ok = idx >= 0
            col = np.zeros(m.p_out)
            col[: m.n_out][ok] = m.weights[np.arange(m.n_out)[ok], idx[ok]]
            vec[g * m.p_out : (g + 1) * m.p_out] = col
        out.append(vec)
    return out


def periodic(values: np.ndarray, period: int, slots: int) -> np.ndarray:
    """``values`` zero-padded to ``period`` and replicated over ``slots``."""
    v = np.zeros(period)
    v[: values.size] = values
    return np.tile(v, slots // period)
