"""Polynomial activations of the packed layout (degree 2 to 4), folded into the maps around.

A polynomial ``p`` after map ``u = W x + b`` is rewritten as ``p(u) = factor * g(w) + const``
with ``w = gain * (u + shift)``: ``gain`` and ``shift`` go into the map before, ``factor`` and
``const`` into the map after, so the encrypted work is only the kernel ``g``:

* degree 2, ``a (u + d)**2 + k``: ``g(w) = w**2`` with ``gain = sqrt|a|``, ``factor = sign a``
  (one level);
* degree 3: ``g(w) = w**2 * (c3 w + c2) + c1 w`` (two levels: ``w**2`` and ``c3 w + c2`` side
  by side, then their product; the linear term joins it at its scale);
* degree 4, shifted to remove its cube term: ``g(w) = (w**2 + k1)**2 + lin * w``,
  ``factor = c4`` (two levels: two squarings; the linear term joins the second product at its
  scale).

Each kernel ends on a product *before* its rescale (scale about ``Delta**2``), where the next
map's baby-step rotations happen. :func:`fold` returns the reason when ``p`` does not qualify.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial import Polynomial

__all__ = ["Act", "fold", "prepare", "run"]


@dataclass
class Act:
    """One folded activation (see module doc)."""

    kind: str  # "sq" | "cubic" | "quartic"
    gain: float = 1.0
    shift: float = 0.0
    factor: float = 1.0
    const: float = 0.0
    c: tuple[float, float, float] = (0.0, 0.0, 0.0)  # cubic: (c1, c2, c3)
    k1: float = 0.0
    lin: float = 0.0

    @property
    def depth(self) -> int:
        return 1 if self.kind == "sq" else 2

    def plain(self, w: np.ndarray) -> np.ndarray:
        """``g(w)`` in plaintext (the oracle of the encrypted kernel)."""
        if self.kind == "sq":
            return w * w
        if self.kind == "cubic":
            c1, c2, c3 = self.c
            return w * w * (c3 * w + c2) + c1 * w
        v = w * w + self.k1
        return v * v + self.lin * w

    def bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An interval holding ``g(w)`` for ``w`` in ``[lo, hi]`` (sound, per feature)."""
        big = np.maximum(np.abs(lo), np.abs(hi))
        small = np.where((lo > 0) | (hi < 0), np.minimum(np.abs(lo), np.abs(hi)), 0.0)
        if self.kind == "sq":
            return small**2, big**2
        if self.kind == "cubic":
            c1, c2, c3 = (abs(v) for v in self.c)
            m = c3 * big**3 + c2 * big**2 + c1 * big
            return -m, m
        v_lo, v_hi = small**2 + self.k1, big**2 + self.k1
        vmax = np.maximum(np.abs(v_lo), np.abs(v_hi))
        return -abs(self.lin) * big, vmax**2 + abs(self.lin) * big

    def sigma(self, big: np.ndarray, s: np.ndarray, rescale: float) -> np.ndarray:
        """Noise of ``g(w)`` (before its final rescale) from noise ``s`` on ``w``, ``|w| <=
        big``; ``rescale`` is the noise one intermediate rescale adds."""
        s2 = 2 * big * s + s**2 + rescale  # w**2 after its rescale
        if self.kind == "sq":
            return 2 * big * s + s**2
        if self.kind == "cubic":
            c1, c2, c3 = (abs(v) for v in self.c)
            st = c3 * s + rescale  # c3 w + c2 after its rescale
            return (c3 * big + c2) * s2 + big**2 * st + s2 * st + c1 * s
        v = big**2 + abs(self.k1)
        return 2 * v * s2 + s2**2 + abs(self.lin) * s


def fold(coeffs: Any) -> Act | str:
    """The kernel form of the polynomial with ``coeffs`` (low to high), or why not."""
    c = [float(v) for v in coeffs]
    if not all(math.isfinite(v) for v in c):
        return "activation coefficients must be finite"
    top = max((abs(v) for v in c), default=0.0)
    c = [0.0 if abs(v) < 1e-12 * top else v for v in c]  # float dust (ReLU fits' odd part)
    while c and c[-1] == 0.0:
        c.pop()
    degree = len(c) - 1
    if degree == 2:
        c0, c1, a = c
        d = c1 / (2 * a)
        return Act("sq", gain=math.sqrt(abs(a)), shift=d, factor=math.copysign(1.0, a),
                   const=c0 - a * d * d)
    if degree not in (3, 4):
        return (f"the packed layout takes polynomial activations of degree 2 to 4, not "
                f"{degree}; use models.fix(..., degree=2..4)")
    if degree == 3:
        return Act("cubic", const=c[0], c=(c[1], c[2], c[3]))
    top = c[-1]
    shift = c[-2] / (degree * top)  # removes the cube term
    q = Polynomial(c)(Polynomial([-shift, 1.0])).coef  # q(w) = p(w - shift)
    q = np.pad(q, (0, degree + 1 - q.size))
    k1 = float(q[2] / (2 * top))
    return Act("quartic", shift=shift, factor=top, const=float(q[0] - top * k1 * k1), k1=k1,
               lin=float(q[1] / top))


def prepare(act: Act, ctx: Any, level: int, scale: float) -> tuple[dict[str, Any], int, float]:
    """Plaintext constants of the kernel on a vector at ``(level, scale)``, and the level and
    scale of its result before the final rescale."""
    if act.kind == "sq":
        return {}, level, scale * scale
    q = ctx.prime(level)
    s1 = scale * scale / q  # w**2 after its rescale, at level - 1
    if act.kind == "cubic":
        c1, c2, c3 = act.c
        full = lambda v: np.full(ctx.slots, v)  # noqa: E731
        consts = {"c3": ctx.encode(full(c3), level, q), "c3_scale": q,
                  "c2": ctx.encode(full(c2), level - 1, scale)}
        if c1 != 0.0:
            consts["c1"] = ctx.encode(full(c1), level - 1, s1)
            consts["c1_scale"] = s1
        return consts, level - 1, s1 * scale
    consts = {"k1": ctx.encode(np.full(ctx.slots, act.k1), level - 1, s1)}
    out_scale = s1 * s1
    if act.lin != 0.0:
        consts["lin"] = ctx.encode(np.full(ctx.slots, act.lin), level - 1, out_scale / scale)
        consts["lin_scale"] = out_scale / scale
    return consts, level - 1, out_scale


def run(act: Act, y: Any, consts: dict[str, Any]) -> Any:
    """The kernel on ``y`` (rescaled, working scale), ending before its final rescale."""
    if act.kind == "sq":
        return y.square_raw()
    w2 = y.square()
    low = y.mod_down(w2.level)
    if act.kind == "cubic":
        t = y.mul_plain(consts["c3"], consts["c3_scale"]).rescale().add_plain(consts["c2"])
        out = w2.multiply_raw(t)
        if "c1" in consts:
            out = out.add(low.mul_plain(consts["c1"], consts["c1_scale"]))
        return out
    out = w2.add_plain(consts["k1"]).square_raw()
    if "lin" in consts:
        out = out.add(low.mul_plain(consts["lin"], consts["lin_scale"]))
    return out
