"""Running the packed single-sample layout (:mod:`veil.models.ckks.packed`).

Client: :func:`encode_packed` turns one flattened input into the slot vectors of the plan's
encoding (public geometry only). Server: :class:`PackedModel` precomputes every plaintext at the
level and scale it is used at (so a request does no encoding), then evaluates with rotations
only on ciphertexts before their rescale. See :mod:`veil.models.ckks.packed` for the layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.models.ckks.packact import prepare as prepare_act
from veil.models.ckks.packact import run as run_act
from veil.models.ckks.packed import (
    MapStep,
    PackedSpec,
    client_baby_plaintexts,
    diagonal_plaintexts,
    gather_plaintexts,
    periodic,
    shared_plaintexts,
)
from veil.models.ckks.values import EncryptedValues
from veil.protocols.inference import PublicPlan

__all__ = ["encode_packed", "PackedModel"]


def encode_packed(x: np.ndarray, encoding: dict[str, Any], slots: int) -> list[np.ndarray]:
    """Client: the slot vectors of one flattened input ``x`` under a packed encoding (gather and
    shared modes: tap groups of one period each; client-baby: rotated copies)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    mode, count, period = encoding["mode"], int(encoding["ciphertexts"]), int(encoding["period"])
    if int(encoding["slots"]) != slots or period > slots or slots % period:
        raise ConfigurationError(
            f"packed encoding for {encoding['slots']} slots (period {period}) does not fit a "
            f"context with {slots} slots; encrypt with the plan of the context's parameters")
    if mode == "client-baby":
        copies, babies = int(encoding["copies"]), [int(a) for a in encoding["babies"]]
        if x.size > period or copies < 1 or copies * period > slots \
                or -(-len(babies) // copies) != count or any(not 0 <= a < period for a in babies):
            raise ConfigurationError(f"input of {x.size} values does not fit the period "
                                     f"{period} x {copies} copies of the packed encoding")
        base = periodic(x, period, period)
        out = [np.zeros(copies * period) for _ in range(count)]
        for i, a in enumerate(babies):
            t, r = divmod(i, copies)
            out[t][r * period : (r + 1) * period] = np.roll(base, -a)
        return [np.tile(v, slots // (copies * period)) for v in out]
    gather = np.asarray(encoding["gather"], dtype=np.int64)
    if gather.ndim != 2 or gather.max(initial=-1) >= x.size or gather.min(initial=0) < -1 \
            or gather.shape[0] > period:
        raise ConfigurationError(
            f"packed encoding: gather table of shape {gather.shape} does not fit an input of "
            f"{x.size} values and period {period}")
    ext = np.append(x, 0.0)
    vals = ext[gather]  # (n_out, K); -1 -> the appended zero
    groups = slots // period
    out = []
    for t in range(count):
        vec = np.zeros(slots)
        for g in range(groups):
            k = t * groups + g
            if k >= gather.shape[1]:
                break
            vec[g * period : g * period + gather.shape[0]] = vals[:, k]
        out.append(vec)
    return out


def _baby_steps(sq: Any, m: MapStep) -> dict[int, Any]:
    """The rotations ``rot(sq, a)`` for the map's baby steps ``a``, each rescaled afterwards
    (rotating before the rescale keeps the key-switching noise negligible)."""
    raw: dict[int, Any] = {}
    if m.seq:
        cur = sq
        for a in range(m.babies[-1] + 1):
            cur = cur if a == 0 else cur.rotate(1)
            if a in m.babies:
                raw[a] = cur
    else:
        raw = {a: sq.rotate(a) if a else sq for a in m.babies}
    return {a: v.rescale() for a, v in raw.items()}


class PackedModel:
    """Server side of the packed layout: call it on ``EncryptedValues`` of slot vectors."""

    layout = "single"

    def __init__(self, spec: PackedSpec, ctx: Any, public: PublicPlan, n_in: int) -> None:
        self._spec, self._ctx, self._public = spec, ctx, public
        self.depth, self.input_size = spec.depth, n_in
        missing = sorted(set(spec.rotations) - set(ctx.rotations))
        if missing:
            raise ConfigurationError(
                f"the context lacks Galois keys for rotations {missing[:8]}; generate it with "
                "plan.keygen() (or he.SlotContext.generate(plan.params, plan.rotations))")
        ctx.check_keys()  # parse the keys now, not during the first request
        self._program = self._precompute()

    def public(self) -> PublicPlan:
        return self._public

    def _precompute(self) -> list[dict[str, Any]]:
        """Every plaintext of every map and activation, encoded at the level and scale it is
        used at (deterministic: the scale chain is fixed by the parameters)."""
        ctx, sp = self._ctx, self._spec
        slots = ctx.slots
        out_delta = 2.0 ** getattr(ctx.params, "output_scale_bits", ctx.params.scale_bits)
        level, scale = ctx.params.depth, ctx.scale
        program: list[dict[str, Any]] = []
        act_consts: dict[str, Any] = {}
        for i, m in enumerate(sp.maps):
            prev = sp.maps[i - 1].act if i else None
            if prev is not None:  # the activation, then the rescale of each baby step
                act_consts, level, scale = prepare_act(prev, ctx, level, scale)
                scale /= ctx.prime(level)
                level -= 1
            target = out_delta if i == len(sp.maps) - 1 else ctx.scale
            pt_scale = target * ctx.prime(level) / scale
            if m.mode == "gather":
                terms = [(0, t, v) for t, v in enumerate(gather_plaintexts(m, sp.gather, slots))]
            elif m.mode == "shared":
                terms = shared_plaintexts(m, sp.gather, slots)
            elif m.mode == "client-baby":
                terms = client_baby_plaintexts(m, slots)
            else:
                terms = diagonal_plaintexts(m, slots)
            pts = [(c, a, ctx.encode(v, level, pt_scale)) for c, a, v in terms if v.any()]
            bias = ctx.encode(periodic(m.bias, m.p_out, slots), level - 1, target)
            program.append({"map": m, "level": level, "pt_scale": pt_scale, "pts": pts,
                            "bias": bias, "act_before": prev, "act_consts": act_consts})
            level, scale = level - 1, target
        return program

    def __call__(self, enc: EncryptedValues) -> EncryptedValues:
        sp = self._spec
        if not isinstance(enc, EncryptedValues) or enc.layout != "single":
            raise ConfigurationError(
                "expected single-layout EncryptedValues from models.encrypt_input with this "
                "model's public()")
        level = self._program[0]["level"]
        if len(enc.tensors) != sp.client_cts or any(
                getattr(t, "level", None) != level or t.ctx.key_id != self._ctx.key_id
                for t in enc.tensors):
            raise ConfigurationError(
                f"this model expects {sp.client_cts} fresh slot ciphertexts under the "
                f"context's key (packed encoding); got {len(enc.tensors)}")
        xs: list[Any] = list(enc.tensors)
        y = None
        for step in self._program:
            m: MapStep = step["map"]
            if y is not None:  # activation (before its rescale), baby steps, rescale each
                xs = _baby_steps(run_act(step["act_before"], y, step["act_consts"]), m)
            y = self._map(step, xs)
        return EncryptedValues("single", 1, [y], 0, outputs=sp.n_out)

    def _map(self, step: dict[str, Any], xs: Any) -> Any:
        """One map on its inputs (gather/client-baby: the client's ciphertexts by index;
        diagonal: the rescaled baby-step rotations by ``a``)."""
        m: MapStep = step["map"]
        ps = step["pt_scale"]
        inner: dict[int, Any] = {}
        for c, key, pt in step["pts"]:
            term = xs[key].mul_plain(pt, ps)
            inner[c] = term if c not in inner else inner[c].add(term)
        acc = None
        if m.horner or m.mode in ("gather", "shared"):
            for c in range(max(inner, default=-1), -1, -1):
                if acc is not None:
                    acc = acc.rotate(m.baby)
                if c in inner:
                    acc = inner[c] if acc is None else acc.add(inner[c])
        else:
            for c, term in sorted(inner.items()):
                term = term.rotate(c * m.baby) if c else term
                acc = term if acc is None else acc.add(term)
        if acc is None:
            raise ConfigurationError("a map of this model has all-zero weights")
        for s in m.fold_steps(self._ctx.slots):
            acc = acc.add(acc.rotate(s))
        return acc.rescale().add_plain(step["bias"])
