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
    note: str = ""  # why the single layout fell back to the generic (slow) lowering
    lanes: Any = None  # the taps-layout lowering (server side), when used

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


_MAX_DEPTH: dict[tuple[int, bool], int] = {}


def max_secure_depth(precision_bits: int = 40) -> int:
    """The deepest circuit ``CKKSParams.for_depth`` can give at 128-bit security."""
    from veil.he import CKKSParams

    key = (precision_bits, False)
    if key not in _MAX_DEPTH:
        d = 0
        while d < 64:
            try:
                CKKSParams.for_depth(d + 1, precision_bits=precision_bits)
            except ConfigurationError:
                break
            d += 1
        _MAX_DEPTH[key] = d
    return _MAX_DEPTH[key]


def plan(net: Any, input_shape: Any = None, *, layout: str = "batched",
         precision_bits: int | None = None, integer_bits: int = 19,
         allow_insecure: bool = False) -> Plan:
    """Plan CKKS inference of ``net`` (an ``nn.Module`` or a converted program).

    Computes stages, depth and slots and picks parameters BEFORE any encryption. Raises
    :class:`UnsupportedLayerError` for layers CKKS cannot run (see ``models.fix``) and
    :class:`DepthExhaustedError` naming the layer where a 128-bit budget runs out.

    ``layout="single"`` uses the rotation-light taps layout (:mod:`veil.models.ckks.lanes`)
    when the model has its shape (a local first layer, quadratic activations, an optional 1x1
    mixing layer, a final affine map); ``Plan.note`` says why when it falls back to the generic
    single layout. ``precision_bits`` defaults to 40 (the taps layout: the most that fits
    ``N = 8192``, with ``|outputs| < 2**9``).
    """
    from veil.he import CKKSParams

    prog = as_program(net, input_shape)
    note = ""
    if layout == "single":
        found = plan_lanes(prog, precision_bits, allow_insecure)
        if not isinstance(found, str):
            return found
        note = f"generic single layout: {found}"
    precision_bits = 40 if precision_bits is None else precision_bits
    stages = lower(prog, layout)
    used = depths(stages, prog)
    depth = max(1, used[prog.output])
    limit = max_secure_depth(precision_bits)
    if depth > limit and not allow_insecure:
        culprit = next(s for s in stages if used[s.name] > limit)
        raise DepthExhaustedError(
            f"the model needs multiplicative depth {depth}, but 128-bit CKKS parameters allow "
            f"at most {limit} (precision_bits={precision_bits}); the budget runs out at "
            f"{culprit.layers} (cumulative depth {used[culprit.name]}).\n" + _table(stages, used)
            + "\nfix: use lower-degree activations (models.fix(..., degree=2)), fewer "
            "activation layers, or a smaller precision_bits"
        )
    params = CKKSParams.for_depth(depth, precision_bits=precision_bits,
                                  integer_bits=integer_bits, allow_insecure=allow_insecure)
    enc: dict[str, Any] = {"kind": "features" if layout == "batched" else "vector"}
    first = stages[0] if stages else None
    if first is not None and first.kind == "im2col":
        enc = {"kind": "im2col", "kernel_size": list(first.data["kernels"].shape[1:]),
               "stride": first.data["stride"], "padding": first.data["padding"]}
    check_slots(stages, params.slots, layout, prog)
    return Plan(layout, tuple(prog.input_shape), math.prod(prog.op(prog.output).shape)
                if prog.ops else math.prod(prog.input_shape), depth, params,
                layout == "single", stages, enc, note=note)


def lanes_params(depth: int, precision_bits: int | None, allow_insecure: bool) -> Any:
    """CKKS parameters for the taps layout: the finest scale that still fits ``N = 8192``."""
    from veil.he import CKKSParams
    from veil.models.ckks.lanes import INTEGER_BITS

    if precision_bits is not None:
        return CKKSParams.for_depth(depth, precision_bits=precision_bits,
                                    integer_bits=INTEGER_BITS, allow_insecure=allow_insecure)
    for p in range(40, 23, -1):
        params = CKKSParams.for_depth(depth, precision_bits=p, integer_bits=INTEGER_BITS,
                                      allow_insecure=allow_insecure)
        if params.poly_modulus_degree <= 8192:
            return params
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
                spec.encoding(), lanes=spec)


def _table(stages: list[Stage], used: dict[str, int]) -> str:
    return "\n".join(f"  {s.kind:7s} +{s.depth} -> {used[s.name]:2d}  {s.layers}" for s in stages)


