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
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.errors import ConfigurationError, DepthExhaustedError, UnsupportedLayerError
from veil.models.ir import PLAIN_KERNELS, Op, Program

__all__ = ["Stage", "Plan", "plan", "lower", "poly_depth", "LAYOUTS", "max_secure_depth"]

LAYOUTS = ("batched", "single")
_AFFINE = {"linear", "conv", "scale_shift", "avgpool2d", "adaptive_avgpool2d", "reshape"}
MAX_DENSE = 1 << 26  # entries of one composed matrix (512 MiB of float64) before we refuse


def poly_depth(degree: int) -> int:
    """Levels an element-wise polynomial of ``degree`` uses (TenSEAL polyval: floor(log2 d)+1)."""
    return 0 if degree < 1 else int(math.floor(math.log2(degree))) + 1


@dataclass
class Stage:
    """One step of a lowered CKKS program. ``data`` holds plaintext weights (server side)."""

    kind: str  # affine | im2col | poly | add | cat
    name: str  # output value name
    inputs: tuple[str, ...]
    in_size: int
    out_size: int
    depth: int
    layers: str  # the source layers, for messages
    data: dict[str, Any] = field(default_factory=dict)


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

    def summary(self) -> dict[str, Any]:
        """JSON-friendly public summary (what a server may publish to its clients)."""
        return {"layout": self.layout, "input_shape": list(self.input_shape),
                "output_size": self.output_size, "depth": self.depth,
                "params": self.params.describe(), "galois_keys": self.galois_keys,
                "input_encoding": self.input_encoding,
                "stages": [[s.kind, s.layers, s.in_size, s.out_size, s.depth]
                           for s in self.stages]}


def _affine_matrix(ops: list[Op], in_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Compose affine ops by probing: rows of ``M`` are images of basis vectors minus f(0)."""
    n = math.prod(in_shape)
    with torch.no_grad():
        basis = torch.cat([torch.zeros(1, n, dtype=torch.float64),
                           torch.eye(n, dtype=torch.float64)]).reshape(n + 1, *in_shape)
        y = basis
        for op in ops:
            y = PLAIN_KERNELS[op.kind](op, y)
        y = y.reshape(n + 1, -1)
    bias = y[0]
    if n * y.shape[1] > MAX_DENSE:
        raise UnsupportedLayerError(
            f"layers {ops[0].describe()}..{ops[-1].describe()} compose to a {n}x{y.shape[1]} "
            "matrix, too large for CKKS inference here; use a smaller model or input"
        )
    return (y[1:] - bias).numpy(), bias.numpy()


def _im2col_ok(op: Op, prog: Program) -> bool:
    a = op.attrs
    return (op.kind == "conv" and a["dim"] == 2 and a["groups"] == 1
            and tuple(a["dilation"]) == (1, 1) and prog.input_shape[0] == 1
            and len(set(a["stride"])) == 1 and not isinstance(a["padding"], str)
            and op.inputs == (prog.input_name,))


def lower(prog: Program, layout: str = "batched") -> list[Stage]:
    """Lower a CKKS program into stages (composing affine chains); see module doc."""
    if layout not in LAYOUTS:
        raise ConfigurationError(f"layout must be 'batched' or 'single', got {layout!r}")
    shapes = {prog.input_name: tuple(prog.input_shape)}
    for op in prog.ops:
        shapes[op.name] = op.shape
    uses: dict[str, int] = {}
    for op in prog.ops:
        for i in op.inputs:
            uses[i] = uses.get(i, 0) + 1
    lazy: dict[str, tuple[str, list[Op]]] = {}
    stages: list[Stage] = []
    done: set[str] = {prog.input_name}

    def materialize(name: str) -> None:
        if name in done:
            return
        base, chain = lazy[name]
        materialize(base)
        size_in, size_out = math.prod(shapes[base]), math.prod(shapes[name])
        layers = ", ".join(o.describe() for o in chain)
        if (layout == "single" and base == prog.input_name and len(chain) == 1
                and _im2col_ok(chain[0], prog)):
            w = chain[0].params["weight"]
            b = chain[0].params.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
            data = {"kernels": w[:, 0].numpy(), "bias": b.numpy(), "out_shape": shapes[name],
                    "stride": int(chain[0].attrs["stride"][0]),
                    "padding": [int(v) for v in chain[0].attrs["padding"]]}
            stages.append(Stage("im2col", name, (base,), size_in, size_out, 1, layers, data))
        else:
            m, b = _affine_matrix(chain, shapes[base])
            ident = m.shape[0] == m.shape[1] and (m == _eye(m.shape[0])).all() and not b.any()
            stages.append(Stage("affine", name, (base,), size_in, size_out, 0 if ident else 1,
                                layers, {"matrix": m, "bias": b, "identity": bool(ident),
                                         "ops": list(chain)}))
        done.add(name)

    for op in prog.ops:
        src = op.inputs[0] if op.inputs else None
        if op.kind in _AFFINE or (op.kind == "poly" and len(op.attrs["coeffs"]) <= 2):
            if src in lazy and src not in done and uses.get(src, 0) == 1:
                base, chain = lazy[src]
                lazy[op.name] = (base, [*chain, op])
            else:
                lazy[op.name] = (src, [op])
            continue
        for i in op.inputs:
            materialize(i)
        size = math.prod(op.shape)
        if op.kind == "poly":
            deg = len(op.attrs["coeffs"]) - 1
            stages.append(Stage("poly", op.name, op.inputs, size, size, poly_depth(deg),
                                op.describe(), {"coeffs": tuple(op.attrs["coeffs"])}))
        elif op.kind == "add":
            stages.append(Stage("add", op.name, op.inputs, size, size, 0, op.describe()))
        elif op.kind == "cat":
            if layout == "single" and op.attrs["dim"] != 1:
                raise UnsupportedLayerError(
                    f"{op.describe()}: the single-sample layout concatenates only along dim 1 "
                    "(channels); use layout='batched'"
                )
            # flattened order of the concatenation, as a permutation of the inputs' values
            idx, start = [], 0
            for i in op.inputs:
                n = math.prod(shapes[i])
                idx.append(torch.arange(start, start + n).reshape(1, *shapes[i]))
                start += n
            perm = torch.cat(idx, dim=op.attrs["dim"]).reshape(-1).tolist()
            stages.append(Stage("cat", op.name, op.inputs, size, size, 0, op.describe(),
                                {"perm": perm}))
        else:
            raise UnsupportedLayerError(f"{op.describe()}: {op.kind} has no CKKS stage")
        done.add(op.name)
    materialize(prog.output)
    return stages


def _eye(n: int) -> Any:
    import numpy as np

    return np.eye(n)


def _depths(stages: list[Stage], prog: Program) -> dict[str, int]:
    """Levels used on the path to each value (max over inputs, plus the stage's own)."""
    used = {prog.input_name: 0}
    for s in stages:
        used[s.name] = max(used[i] for i in s.inputs) + s.depth
    return used


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
    used = _depths(stages, prog)
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
    _check_slots(stages, params.slots, layout, prog)
    return Plan(layout, tuple(prog.input_shape), math.prod(prog.op(prog.output).shape)
                if prog.ops else math.prod(prog.input_shape), depth, params,
                layout == "single", stages, enc, note=note)


def _shapes(prog: Program) -> dict[str, tuple[int, ...]]:
    shapes = {prog.input_name: tuple(prog.input_shape)}
    shapes.update({op.name: op.shape for op in prog.ops})
    return shapes


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
    return stages, analyze(prog, stages, _shapes(prog), slots)


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


def _check_slots(stages: list[Stage], slots: int, layout: str, prog: Program) -> None:
    if layout != "single":
        return
    for s in stages:
        if s.kind == "affine" and s.out_size > slots:
            raise ConfigurationError(
                f"{s.layers}: {s.out_size} outputs exceed the {slots} slots of one ciphertext "
                "in the single-sample layout; use layout='batched'"
            )
        if s.kind == "im2col":
            kh, kw = s.data["kernels"].shape[1:]
            windows = math.prod(s.data["out_shape"][1:])
            if kh * kw * (1 << (windows - 1).bit_length()) > slots:
                raise ConfigurationError(f"{s.layers}: im2col needs more than {slots} slots")


def _table(stages: list[Stage], used: dict[str, int]) -> str:
    return "\n".join(f"  {s.kind:7s} +{s.depth} -> {used[s.name]:2d}  {s.layers}" for s in stages)


def as_program(net: Any, input_shape: Any = None) -> Program:
    """Convert ``net`` for CKKS (``input_shape`` inferred from a first Linear when omitted)."""
    from veil.models.convert import to_program

    if isinstance(net, Program):
        return net
    if input_shape is None:
        first = next((m for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d
                                                              | torch.nn.Conv1d)), None)
        if not isinstance(first, torch.nn.Linear):
            raise ConfigurationError(
                "input_shape is needed for this model (its first layer is not Linear); pass "
                "input_shape=(C, H, W) per sample, without the batch dimension"
            )
        input_shape = (first.in_features,)
    return to_program(net, input_shape, "ckks")
