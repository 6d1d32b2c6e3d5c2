"""The packed single-sample candidate of ``models.plan`` (lowering, parameters, prediction).

Kept apart from :mod:`veil.models.ckks.plan` so the plan module stays about choosing: this one
lowers a program to :class:`~veil.models.ckks.packed.PackedSpec` for a slot count, with the
first map's public geometry computed from the weights' nonzero pattern (every weight set to one),
and picks parameters with :func:`~veil.models.ckks.packbound.choose_params`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veil.errors import UnsupportedLayerError
from veil.models.ckks.packbound import Prediction, choose_params
from veil.models.ckks.packed import PackedSpec, analyze
from veil.models.ckks.stages import Stage, lower, ones_pattern, shapes
from veil.models.ir import Program

__all__ = ["packed_candidate", "packed_lowering"]


def packed_lowering(prog: Program, slots: int) -> tuple[list[Stage], PackedSpec | str]:
    """Stages and the packed lowering of ``prog`` for ``slots`` slots (or the reason not)."""
    try:
        stages = lower(prog, "batched")
    except UnsupportedLayerError as exc:
        return [], str(exc)
    if not stages or stages[0].kind != "affine" or stages[0].inputs != (prog.input_name,):
        return stages, "the model does not start with an affine layer on its input"
    shape = shapes(prog)
    patterns = [ones_pattern(s, tuple(shape[s.inputs[0]])).T for s in stages
                if s.kind == "affine"]
    n_in = int(np.prod(prog.input_shape))
    return stages, analyze(stages, n_in, slots, patterns)


def packed_candidate(prog: Program, precision_bits: int | None, allow_insecure: bool,
                     domain: tuple[float, float], tolerance: float,
                     samples: np.ndarray | None = None,
                     ) -> tuple[list[Stage], PackedSpec, Any, Prediction] | str:
    """(stages, spec, params, prediction) of the packed layout, or why it does not apply."""
    cache: dict[int, tuple[list[Stage], PackedSpec | str]] = {}

    def make(slots: int) -> PackedSpec | str:
        cache[slots] = packed_lowering(prog, slots)
        return cache[slots][1]

    found = choose_params(make, domain, tolerance, precision_bits=precision_bits,
                          allow_insecure=allow_insecure, samples=samples)
    if isinstance(found, str):
        return found
    spec, params, pred = found
    return cache[spec.slots][0], spec, params, pred
