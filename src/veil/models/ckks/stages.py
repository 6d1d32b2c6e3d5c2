"""Internal to ``veil.models.ckks``: lowering a converted program into CKKS stages.

Shared by :mod:`~veil.models.ckks.plan` (parameters), :mod:`~veil.models.ckks.lanes` (the taps
layout) and :mod:`~veil.models.ckks.infer` (running the stages); it imports none of them.
See :mod:`veil.models.ckks.plan` for the stage kinds and the two layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.errors import ConfigurationError, UnsupportedLayerError
from veil.models.ir import PLAIN_KERNELS, Op, Program

__all__ = ["LAYOUTS", "MAX_DENSE", "Stage", "poly_depth", "affine_matrix", "lower", "depths",
           "shapes", "check_slots", "as_program", "ones_pattern"]

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


def affine_matrix(ops: list[Op], in_shape: tuple[int, ...]) -> tuple[Any, Any]:
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


def ones_pattern(stage: Stage, in_shape: tuple[int, ...]) -> Any:
    """Nonzero pattern ``(n_in, n_out)`` of an affine stage's map with every weight set to 1:
    public geometry (zero weights change neither receptive fields nor diagonals)."""
    import copy

    import numpy as np

    ops = []
    for op in stage.data["ops"]:
        o = copy.copy(op)
        if op.params:
            o.params = {k: v.new_ones(v.shape) for k, v in op.params.items()}
        ops.append(o)
    m, _ = affine_matrix(ops, in_shape)
    return np.abs(m) > 0


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
            m, b = affine_matrix(chain, shapes[base])
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


def depths(stages: list[Stage], prog: Program) -> dict[str, int]:
    """Levels used on the path to each value (max over inputs, plus the stage's own)."""
    used = {prog.input_name: 0}
    for s in stages:
        used[s.name] = max(used[i] for i in s.inputs) + s.depth
    return used


def shapes(prog: Program) -> dict[str, tuple[int, ...]]:
    shapes = {prog.input_name: tuple(prog.input_shape)}
    shapes.update({op.name: op.shape for op in prog.ops})
    return shapes


def check_slots(stages: list[Stage], slots: int, layout: str, prog: Program) -> None:
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
