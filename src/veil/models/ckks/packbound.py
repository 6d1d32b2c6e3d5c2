"""Error prediction and parameter choice for the packed layout (:mod:`veil.models.ckks.packed`).

Before any key exists, the planner predicts the largest logit error for given CKKS parameters
from the weights and the declared input domain, per output and per layer:

* **magnitudes**: interval arithmetic from the domain through every map (``lo, hi`` per
  feature) and square; the l1 bound ``sum |W| |x| + |b|`` bounds every partial sum of a map,
  which fixes the integer bits the first prime ``q0`` must hold at the last level;
* **noise**: a per-feature standard deviation, propagated as independent Gaussian noise
  (average-case model, Costache-Curtis-Hales-Murphy-Ogilvie-Player 2020): fresh symmetric
  encryption ``sigma_f = c_f sqrt(N/2) * 3.2 / Delta``; each rescale adds rounding noise
  ``sigma_r = c_r N / (6 Delta)``; a map multiplies by its rows' l2 norms
  (``sigma_out^2 = W^2 sigma_in^2 + weight-encoding + sigma_r^2``); a square turns ``sigma`` into
  ``2 max|u| sigma + sigma^2`` plus its own rescale; key switching happens only before rescales
  (divided by about ``Delta``: counted, negligible). ``c_f = c_r = 2.5`` are measured constants
  (SEAL 4.1, N = 8192..32768) with a margin of about 2.
* the predicted maximum error is ``TAIL = 8`` standard deviations of the output noise.

Worst-case intervals over the whole domain are sound but loose for deep nets (an adversarial
input could reach them; natural ones stay far below). ``models.plan(..., calibration=x)``
replaces them with ``CAL_MARGIN = 4`` times the magnitudes seen on sample inputs ``x``: the
prediction then holds for inputs whose activations stay within that margin.

:func:`choose_params` takes the smallest ring (N = 8192, then 16384, 32768) and, for it, the
finest scale that fits 128-bit security, whose prediction is within the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.models.ckks.packed import PackedSpec

__all__ = ["Prediction", "predict", "choose_params", "finest_params", "TAIL"]

TAIL = 8.0
CAL_MARGIN = 4.0  # calibrated bounds: this many times the largest magnitude seen
C_FRESH = 2.5
C_RESCALE = 2.5
C_KEYSWITCH = 5.0
SIGMA_E = 3.2


@dataclass
class Prediction:
    """Predicted errors for one parameter set: the maximum logit error and per-map detail."""

    max_error: float
    per_map: list[float]  # predicted max error after each map (activation included)
    output_bound: float  # l1 bound on every value at the last level
    integer_bits: int


def _intervals(spec: PackedSpec, domain: tuple[float, float]) -> list[tuple[np.ndarray, ...]]:
    """(lo, hi, l1 bound of the map's output, max|value| into the map) per map."""
    lo = np.full(spec.n_in, float(domain[0]))
    hi = np.full(spec.n_in, float(domain[1]))
    out = []
    for m in spec.maps:
        w = m.weights
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        mag = np.maximum(np.abs(lo), np.abs(hi))
        ulo = m.bias + wp @ lo + wn @ hi
        uhi = m.bias + wp @ hi + wn @ lo
        l1 = np.abs(w) @ mag + np.abs(m.bias)
        out.append((ulo, uhi, l1, mag))
        lo, hi = m.act.bounds(ulo, uhi) if m.act is not None else (ulo, uhi)
    return out


def _calibrated(spec: PackedSpec, samples: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Like :func:`_intervals` from sample inputs: every magnitude is ``CAL_MARGIN`` times the
    largest seen on the samples (per feature)."""
    x = samples.reshape(samples.shape[0], -1).astype(np.float64)
    out = []
    for m in spec.maps:
        mag = CAL_MARGIN * np.abs(x).max(axis=0)
        u = x @ m.weights.T + m.bias
        umax = CAL_MARGIN * np.abs(u).max(axis=0)
        l1 = CAL_MARGIN * (np.abs(x) @ np.abs(m.weights).T + np.abs(m.bias)).max(axis=0)
        out.append((-umax, umax, l1, mag))
        x = m.act.plain(u) if m.act is not None else u
    return out


def predict(spec: PackedSpec, params: Any, domain: tuple[float, float],
            samples: np.ndarray | None = None) -> Prediction:
    """The predicted maximum logit error of ``spec`` under ``params`` for inputs in ``domain``
    (or, with ``samples``, for inputs whose activations stay within ``CAL_MARGIN`` times
    those of the samples)."""
    n = params.poly_modulus_degree
    delta = 2.0**params.scale_bits
    sig_f = C_FRESH * math.sqrt(n / 2) * SIGMA_E / delta
    sig_r = C_RESCALE * n / (6 * delta)
    out_delta = 2.0 ** getattr(params, "output_scale_bits", params.scale_bits)
    sig_out = C_RESCALE * n / (6 * out_delta)
    sig_ks = C_KEYSWITCH * n * SIGMA_E * math.sqrt(params.depth + 1) / delta**2
    sigma = np.full(spec.n_in, sig_f)
    per_map = []
    bounds = _bounds(spec, domain, samples)
    for i, (m, (ulo, uhi, _l1, mag)) in enumerate(zip(spec.maps, bounds)):
        w2 = m.weights**2
        last = i == len(spec.maps) - 1
        sig_pt = math.sqrt(n / 24) / (out_delta if last else delta)  # weight encoding
        var = w2 @ sigma**2 + (sig_pt**2) * (mag**2).sum() + (sig_out if last else sig_r)**2
        var += m.rotation_count(spec.slots) * sig_ks**2
        s = np.sqrt(var)
        if m.act is not None:
            umax = np.maximum(np.abs(ulo), np.abs(uhi))
            s = m.act.sigma(umax, s, sig_r) + sig_r
        sigma = s
        per_map.append(float(TAIL * sigma.max()))
    out_bound = float(bounds[-1][2].max())
    return Prediction(per_map[-1], per_map, out_bound, _integer_bits(out_bound))


def _bounds(spec: PackedSpec, domain: tuple[float, float],
            samples: np.ndarray | None) -> list[tuple[np.ndarray, ...]]:
    return _intervals(spec, domain) if samples is None else _calibrated(spec, samples)


def _integer_bits(out_bound: float) -> int:
    """Integer bits q0 must hold at the last level for values up to ``out_bound``."""
    return max(1, math.ceil(math.log2(max(out_bound, 1.0) * 1.01)) + 1)


def finest_params(depth: int, n: int, int_bits: int, precision_bits: int | None,
                  allow_insecure: bool, gap: int = 0) -> Any:
    """The finest-scale slot parameters of ring ``n`` for ``depth`` (None when none fits):
    outputs at ``2**(scale_bits - gap)``, ``q0`` holding them with ``int_bits`` integer bits,
    a special prime of 30 bits (see :class:`~veil.he.lattice.slotparams.SlotParams`)."""
    from veil.he.lattice.slotparams import MIN_SPECIAL_BITS, SlotParams
    from veil.he.params import MAX_LOG_Q

    scales = [precision_bits] if precision_bits is not None else range(58, 19, -1)
    special = max(MIN_SPECIAL_BITS, math.ceil(math.log2(2 * n)) + 2)
    for s in scales:
        so = s - gap
        q0 = so + int_bits + 1
        bits = (q0,) + (s,) * depth + (special,)
        if so < 20 or q0 > 60 or s < math.log2(2 * n) + 2:
            continue
        if sum(bits) > MAX_LOG_Q[128][n] and not allow_insecure:
            continue
        try:
            return SlotParams(n, bits, s, so, allow_insecure=allow_insecure)
        except ConfigurationError:
            continue
    return None


def _best_for_ring(spec: PackedSpec, n: int, int_bits: int, domain: tuple[float, float],
                   precision_bits: int | None, allow_insecure: bool,
                   samples: np.ndarray | None) -> tuple[Any, Prediction] | None:
    """The parameters of ring ``n`` (over output-scale gaps) with the smallest prediction."""
    best = None
    for gap in range(0, 31, 2):
        params = finest_params(spec.depth, n, int_bits, precision_bits, allow_insecure, gap)
        if params is None:
            continue
        pred = predict(spec, params, domain, samples)
        if best is None or pred.max_error < best[1].max_error:
            best = (params, pred)
    return best


def choose_params(make_spec: Callable[[int], PackedSpec | str], domain: tuple[float, float],
                  tolerance: float, *, precision_bits: int | None = None,
                  allow_insecure: bool = False, samples: np.ndarray | None = None,
                  ) -> tuple[PackedSpec, Any, Prediction] | str:
    """The smallest ring (and its finest scale) whose predicted error is within ``tolerance``.

    ``make_spec(slots)`` lowers the model for a slot count. Returns the reason (a string)
    when the model does not fit the layout; raises ConfigurationError naming the layer where
    the error first passes the tolerance when even the largest ring cannot meet it.
    """
    best: tuple[PackedSpec, Any, Prediction] | None = None
    reason = "no ring fits"
    for n in (8192, 16384, 32768):
        spec = make_spec(n // 2)
        if isinstance(spec, str):
            reason = spec
            continue
        int_bits = _integer_bits(float(_bounds(spec, domain, samples)[-1][2].max()))
        found = _best_for_ring(spec, n, int_bits, domain, precision_bits, allow_insecure,
                               samples)
        if found is None:
            reason = (f"no 128-bit parameters at N={n} hold depth {spec.depth} with "
                      f"{int_bits} integer bits for the outputs")
            continue
        params, pred = found
        if best is None or pred.max_error < best[2].max_error:
            best = (spec, params, pred)
        if pred.max_error <= tolerance:
            return spec, params, pred
    if best is None:
        return reason
    spec, params, pred = best
    per = pred.per_map
    i = next((k for k, e in enumerate(per) if e > tolerance), len(per) - 1)
    raise ConfigurationError(
        f"the predicted logit error is {pred.max_error:.3g} even with the strongest parameters "
        f"({params.describe()}), above the tolerance {tolerance:g}; it passes the tolerance at "
        f"{spec.maps[i].layers} (predicted {per[i]:.3g} there). Fix: smaller weights or "
        "activations there (retrain with weight decay), a smaller input domain, or a larger "
        "tolerance=")

