"""Plan a CKKS inference before anything runs: stages, depth, slots, rotations, parameters.

The converted program is lowered into **stages**:

* ``affine``: a maximal chain of affine layers (Linear, Conv, folded BatchNorm, average pooling,
  flatten/reshape) composed into one dense map ``y = x @ M + b`` (probed in float64 on the
  identity basis). One level, however long the chain: composing costs no depth.
  An identity map (a bare flatten) costs nothing.
* ``im2col``: (single-sample layout only) a first convolution on a one-channel image, done with
  TenSEAL's im2col encoding: one level, output one vector per output channel.
* ``poly``: an element-wise polynomial activation; ``floor(log2 degree) + 1`` levels.
* ``add`` / ``cat``: residual additions and concatenations; no level.

Two layouts (see :mod:`veil.models.ckks.infer`): ``"batched"`` (one ciphertext per feature,
samples across slots, rotation-free: no Galois keys) and ``"single"`` (one sample packed in a
vector; vector x matrix products with rotations: Galois keys needed).

:func:`plan` returns a :class:`Plan` with the depth, the per-stage depth table, and CKKS
parameters from :meth:`veil.he.CKKSParams.for_depth` (128-bit secure unless
``allow_insecure=True``). A model deeper than 128-bit parameters allow raises
:class:`DepthExhaustedError` naming the layer at which the budget runs out. Everything in a plan
is public (derived from the architecture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veil.errors import ConfigurationError, DepthExhaustedError, UnsupportedLayerError
from veil.models.ckks.cost import generic_cost, lanes_cost, packed_cost
from veil.models.ckks.single import packed_candidate
from veil.models.ckks.stages import Stage, as_program, check_slots, depths, lower, shapes
from veil.models.ir import Program
from veil.protocols.inference import PublicPlan

__all__ = ["Plan", "plan", "max_secure_depth", "lanes_lowering"]



@dataclass
class Plan:
    """Public description of a CKKS inference: layout, depth, parameters, per-stage table."""

    layout: str
    input_shape: tuple[int, ...]
    output_size: int
    depth: int
    params: Any  # veil.he.CKKSParams
    galois_keys: bool
    stages: list[Stage]
    input_encoding: dict[str, Any]
    note: str = ""  # the layout chosen and why (single layout: the cost model's comparison)
    lanes: Any = None  # the taps-layout lowering (server side), when used
    packed: Any = None  # the packed-layout lowering (server side), when used
    rotations: tuple[int, ...] = ()  # packed layout: the only Galois keys it needs
    predicted_error: float | None = None  # packed layout: predicted max logit error
    cost: Any = None  # the cost model's estimate for the chosen layout (veil.models.ckks.cost)

    def keygen(self) -> Any:
        """The client's secret context for this plan (the right kind, keys and parameters):
        a :class:`veil.he.SlotContext` with exactly :attr:`rotations` for the packed layout,
        else a :class:`veil.he.CKKSContext` (Galois keys when the layout rotates)."""
        from veil.he import CKKSContext
        from veil.he.lattice.slots import SlotContext

        if self.packed is not None:
            return SlotContext.generate(self.params, self.rotations)
        return CKKSContext.generate(self.params, galois_keys=self.galois_keys)

    @property
    def slots(self) -> int:
        return self.params.slots

    def table(self) -> str:
        """One line per stage: kind, layers, sizes, levels used and cumulative depth."""
        rows, used = [], 0
        for s in self.stages:
            used += s.depth
            rows.append(f"{s.kind:7s} {s.in_size:>6d} -> {s.out_size:<6d} depth +{s.depth} "
                        f"(total {used})  {s.layers}")
        return "\n".join(rows)

    def public(self) -> PublicPlan:
        """The public agreement a server publishes to its clients (no weights)."""
        return PublicPlan(self.layout, tuple(int(v) for v in self.input_shape),
                          int(self.output_size), int(self.depth), self.params.describe(),
                          bool(self.galois_keys), dict(self.input_encoding),
                          tuple((s.kind, s.layers, int(s.in_size), int(s.out_size),
                                 int(s.depth)) for s in self.stages))


_MAX_DEPTH: dict[tuple[int, int], int] = {}


def max_secure_depth(precision_bits: int = 40, integer_bits: int = 19) -> int:
    """The deepest circuit ``CKKSParams.for_depth`` can give at 128-bit security."""
    from veil.he import CKKSParams

    key = (precision_bits, integer_bits)
    if key not in _MAX_DEPTH:
        d = 0
        while d < 64:
            try:
                CKKSParams.for_depth(d + 1, precision_bits=precision_bits,
                                     integer_bits=integer_bits)
            except ConfigurationError:
                break
            d += 1
        _MAX_DEPTH[key] = d
    return _MAX_DEPTH[key]


def plan(net: Any, input_shape: Any = None, *, layout: str = "batched",
         precision_bits: int | None = None, integer_bits: int = 19,
         allow_insecure: bool = False, domain: tuple[float, float] = (0.0, 1.0),
         tolerance: float = 0.05, calibration: Any = None,
         single_layout: str = "auto") -> Plan:
    """Plan CKKS inference of ``net`` (an ``nn.Module`` or a converted program).

    Computes stages, depth and slots and picks parameters BEFORE any encryption. Raises
    :class:`UnsupportedLayerError` for layers CKKS cannot run (see ``models.fix``) and
    :class:`DepthExhaustedError` naming the layer where a 128-bit budget runs out.

    ``layout="single"`` compares the single-sample layouts the model fits with the cost model
    of :mod:`veil.models.ckks.cost` (latency, request bytes, keys) and takes the fastest:
    the packed layout (:mod:`veil.models.ckks.packed`: chains of affine maps and quadratic
    activations, Galois keys only for :attr:`Plan.rotations`, parameters chosen so that the
    predicted maximum logit error for inputs in ``domain`` is within ``tolerance``), the taps
    layout (:mod:`veil.models.ckks.lanes`) or the generic one; ``Plan.note`` states the choice
    and why. ``precision_bits`` defaults to 40 (taps: the finest scale that fits N = 8192).
    The packed prediction uses worst-case bounds over ``domain``; ``calibration`` (sample
    inputs, e.g. training data) bounds activations by 4x those seen instead, which suits deep
    nets better (see :mod:`veil.models.ckks.packbound`). ``single_layout`` = ``"packed"``,
    ``"taps"`` or ``"generic"`` insists on one (a ConfigurationError says why it does not fit).
    """
    prog = as_program(net, input_shape)
    note = ""
    if layout == "single":
        if single_layout not in ("auto", "packed", "taps", "generic"):
            raise ConfigurationError(f"single_layout must be 'auto', 'packed', 'taps' or "
                                     f"'generic', got {single_layout!r}")
        found = plan_single(prog, precision_bits, allow_insecure, _domain(domain), tolerance,
                            _samples(calibration, prog), single_layout)
        if isinstance(found, Plan):
            return found
        if single_layout not in ("auto", "generic"):
            raise ConfigurationError(f"the {single_layout} single-sample layout does not fit "
                                     f"this model: {found}")
        note = found
    precision_bits = 40 if precision_bits is None else precision_bits
    stages = lower(prog, layout)
    used = depths(stages, prog)
    depth = max(1, used[prog.output])
    params = _depth_params(stages, used, depth, precision_bits, integer_bits, allow_insecure)
    enc: dict[str, Any] = {"kind": "features" if layout == "batched" else "vector"}
    first = stages[0] if stages else None
    if first is not None and first.kind == "im2col":
        enc = {"kind": "im2col", "kernel_size": list(first.data["kernels"].shape[1:]),
               "stride": first.data["stride"], "padding": first.data["padding"]}
    check_slots(stages, params.slots, layout, prog)
    out = Plan(layout, tuple(prog.input_shape), math.prod(prog.op(prog.output).shape)
               if prog.ops else math.prod(prog.input_shape), depth, params,
               layout == "single", stages, enc, note=note)
    if layout == "single":
        out.cost = generic_cost(stages, params)
        out.note = f"{note}; chosen: {out.cost.describe()}"
    return out


def _depth_params(stages: list[Stage], used: dict[str, int], depth: int, precision_bits: int,
                  integer_bits: int, allow_insecure: bool) -> Any:
    """``CKKSParams.for_depth`` for the lowered model, or the error that says why not: the
    layer where a 128-bit budget runs out, or the precision that works (scale drift)."""
    from veil.he import CKKSParams

    try:
        return CKKSParams.for_depth(depth, precision_bits=precision_bits,
                                    integer_bits=integer_bits, allow_insecure=allow_insecure)
    except ConfigurationError as exc:
        limit = max_secure_depth(precision_bits, integer_bits)
        if depth <= limit or allow_insecure:
            raise
        culprit = next(s for s in stages if used[s.name] > limit)
        raise DepthExhaustedError(
            f"the model needs multiplicative depth {depth}, but 128-bit CKKS parameters allow "
            f"at most {limit} (precision_bits={precision_bits}); the budget runs out at "
            f"{culprit.layers} (cumulative depth {used[culprit.name]}).\n" + _table(stages, used)
            + "\nfix: use lower-degree activations (models.fix(..., degree=2)), fewer "
            "activation layers, or a smaller precision_bits"
        ) from exc


def lanes_params(depth: int, precision_bits: int | None, allow_insecure: bool) -> Any:
    """CKKS parameters for the taps layout: the finest scale that still fits ``N = 8192``."""
    from veil.he import CKKSParams
    from veil.models.ckks.lanes import INTEGER_BITS

    if precision_bits is not None:
        return CKKSParams.for_depth(depth, precision_bits=precision_bits,
                                    integer_bits=INTEGER_BITS, allow_insecure=allow_insecure)
    params = None
    for p in range(40, 23, -1):
        try:
            params = CKKSParams.for_depth(depth, precision_bits=p, integer_bits=INTEGER_BITS,
                                          allow_insecure=allow_insecure)
        except ConfigurationError:
            continue
        if params.poly_modulus_degree <= 8192:
            return params
    if params is None:
        raise ConfigurationError(f"no 128-bit CKKS parameters hold depth {depth} for the taps "
                                 "layout")
    return params


def lanes_lowering(prog: Program, slots: int) -> tuple[list[Stage], Any]:
    """Stages and the taps-layout lowering of ``prog`` for ``slots`` slots (or a reason)."""
    from veil.models.ckks.lanes import analyze

    try:
        stages = lower(prog, "batched")
    except UnsupportedLayerError as exc:
        return [], str(exc)
    if [s.kind for s in stages][:1] != ["affine"]:
        return stages, "the model does not start with an affine layer"
    return stages, analyze(prog, stages, shapes(prog), slots)


def plan_lanes(prog: Program, precision_bits: int | None, allow_insecure: bool) -> Plan | str:
    """A taps-layout :class:`Plan` for ``prog``, or the reason it does not qualify."""
    stages, spec = lanes_lowering(prog, 4096)  # shape check before choosing parameters
    if isinstance(spec, str):
        return spec
    try:
        params = lanes_params(spec.depth, precision_bits, allow_insecure)
    except ConfigurationError as exc:
        return str(exc)
    if params.slots != spec.slots:
        stages, spec = lanes_lowering(prog, params.slots)
        if isinstance(spec, str):
            return spec
    for s in stages:
        s.depth = 1  # one level per stage: affine, square, affine, square, block sum
    return Plan("single", tuple(prog.input_shape), spec.n_out, spec.depth, params, True, stages,
                spec.encoding(), lanes=spec, cost=lanes_cost(spec, params))


def _domain(domain: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise ConfigurationError(f"domain must be (low, high), got {domain!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigurationError(f"domain must be finite with low < high, got {domain!r}")
    return lo, hi


def _samples(calibration: Any, prog: Program) -> Any:
    import numpy as np

    if calibration is None:
        return None
    arr = np.asarray(calibration.detach().cpu().numpy() if hasattr(calibration, "detach")
                     else calibration, dtype=np.float64)
    n = math.prod(prog.input_shape)
    if arr.size == 0 or arr.size % n or not np.isfinite(arr).all():
        raise ConfigurationError(
            f"calibration must hold finite sample inputs of {n} values each (shape (k, "
            f"{', '.join(map(str, prog.input_shape))})), got shape {arr.shape}")
    return arr.reshape(-1, n)


def plan_single(prog: Program, precision_bits: int | None, allow_insecure: bool,
                domain: tuple[float, float], tolerance: float, samples: Any = None,
                only: str = "auto") -> Plan | str:
    """The fastest single-sample plan by the cost model, or the reasons (a string) why only
    the generic layout applies (``plan`` then builds that one)."""
    notes: list[str] = []
    cands: list[Plan] = []
    if only == "generic":
        return "generic single layout (asked for)"
    found = "not asked for" if only == "taps" else packed_candidate(
        prog, precision_bits, allow_insecure, domain, tolerance, samples)
    if isinstance(found, str):
        notes.append(f"packed: {found}")
    else:
        stages, spec, params, pred = found
        for s in stages:
            s.depth = 1 if s.kind == "affine" else s.depth
        enc = {**spec.encoding(), "domain": [float(domain[0]), float(domain[1])],
               "calibrated": samples is not None}
        cands.append(Plan("single", tuple(prog.input_shape), spec.n_out, spec.depth, params,
                          True, stages, enc, packed=spec, rotations=spec.rotations,
                          predicted_error=pred.max_error, cost=packed_cost(spec, params)))
    lanes = "not asked for" if only == "packed" else plan_lanes(prog, precision_bits,
                                                                 allow_insecure)
    if isinstance(lanes, str):
        notes.append(f"taps: {lanes}")
    else:
        cands.append(lanes)
    if not cands:
        return "generic single layout (" + "; ".join(notes) + ")"
    notes = [n for n in notes if not n.endswith("not asked for")]
    best = min(cands, key=lambda p: p.cost.latency_ms)
    for c in cands:  # near-equal latency (within 25%): take the one with far fewer bytes
        size = c.cost.request_bytes + c.cost.context_bytes
        if c is not best and c.cost.latency_ms <= 1.25 * best.cost.latency_ms \
                and 2 * size < best.cost.request_bytes + best.cost.context_bytes:
            best = c
    others = [c.cost.describe() for c in cands if c is not best] + notes
    best.note = (f"chosen (fastest by the cost model, or within 25% of it with under half "
                 f"the bytes): {best.cost.describe()}"
                 + (f"; predicted max logit error {best.predicted_error:.2g}"
                    if best.predicted_error is not None else "")
                 + ("; other candidates: " + "; ".join(others) if others else ""))
    return best


def _table(stages: list[Stage], used: dict[str, int]) -> str:
    return "\n".join(f"  {s.kind:7s} +{s.depth} -> {used[s.name]:2d}  {s.layers}" for s in stages)


