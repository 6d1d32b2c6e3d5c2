"""What the server evaluates: a model behind a small interface, and its public description.

An :class:`Evaluator` is built once in the parent process (for ``GET /model``) and pickled to
every worker process. It never holds a secret key: ``bind(public_ctx)`` compiles the model for one
uploaded public context and returns a function from the request's ciphertexts to the result's.

Inputs and outputs travel as ``models.encrypted`` messages (:mod:`veil.protocols.inference`, the
format of :class:`veil.models.EncryptedValues`), and the public description holds a
:class:`veil.protocols.inference.PublicPlan` (``Plan.public()``: typed and versioned), so a
``veil.serve`` client and ``veil.models`` agree on the two layouts:

``batched``
    one ciphertext per input feature, holding that feature of up to ``slots`` rows (one row per
    slot). Linear layers are plaintext-weighted sums of ciphertexts: no rotations, so no Galois
    keys and an uploaded context of about 1 MB. The server learns the row count.
``single``
    one sample per request, in the layout ``veil.models.plan(..., layout="single")`` chose
    (``GET /model``: ``layout_choice``): usually the packed layout, on a
    :class:`veil.he.lattice.slots.SlotContext` with Galois keys for exactly the plan's rotations
    (``plan.input_encoding["rotations"]``: a public context of a few tens of MB, one ciphertext
    answer), else the taps or generic layout on a ``CKKSContext`` with SEAL's Galois keys.
    Lower latency for one row.

Models are named by a spec string (``veil serve --model SPEC``), see :func:`load_evaluator`:
``linear:digits`` (built in, numpy only), ``zoo:NAME[:single]`` (``veil.models.zoo``, compiled
with ``veil.models``; models with ReLU are made HE-friendly with ``models.fix`` first) or the path
of your own model saved with ``veil.models.save`` (read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from veil.errors import ConfigurationError, KeyMismatchError
from veil.protocols.inference import PublicPlan
from veil.serve.plans import (
    check_context_kind,
    is_packed,
    params_from_description,
    plan_rotations,
)

__all__ = [
    "ModelInfo",
    "Evaluator",
    "BoundModel",
    "LinearEvaluator",
    "CompiledEvaluator",
    "load_evaluator",
    "file_evaluator",
    "check_domain",
    "params_from_description",
    "digits_linear",
]

# (input tensors, n_samples, im2col windows) -> output tensors
BoundModel = Callable[[Sequence[Any], int, int], list[Any]]


@dataclass(frozen=True)
class ModelInfo:
    """Public description of a served model (``GET /model``): architecture sizes, no weights.

    ``plan`` is the model's :class:`~veil.protocols.inference.PublicPlan` (``Plan.public()``):
    layout, input shape and encoding, output size, depth, CKKS parameters (``describe()`` form)
    and whether Galois keys are needed. ``note`` is ``Plan.note`` (the layout chosen and why)
    and ``predicted_error`` ``Plan.predicted_error`` (packed layout: the predicted maximum
    output error for inputs in the domain).
    """

    name: str
    plan: PublicPlan
    description: str = ""
    domain: tuple[float, float] | None = None  # declared input range (clients check it)
    note: str = ""
    predicted_error: float | None = None

    @property
    def layout(self) -> str:
        return self.plan.layout

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.plan.input_shape

    @property
    def output_size(self) -> int:
        return self.plan.output_size

    @property
    def galois_keys(self) -> bool:
        return self.plan.galois_keys

    @property
    def packed(self) -> bool:
        """Whether the model runs in the packed layout (clients need a ``SlotContext``)."""
        return is_packed(self.plan)

    @property
    def rotations(self) -> tuple[int, ...]:
        """Packed layout: the rotation steps the context needs Galois keys for (else ``()``)."""
        return plan_rotations(self.plan)

    @property
    def params(self) -> Any:
        """The parameters to generate the client's context with (128-bit checked):
        ``veil.he.CKKSParams``, or ``SlotParams`` for the packed layout."""
        return params_from_description(self.plan.params)

    def to_json(self) -> dict[str, Any]:
        domain = None if self.domain is None else [float(v) for v in self.domain]
        error = None if self.predicted_error is None else float(self.predicted_error)
        choice = {"layout": self.layout, "encoding": self.plan.input_encoding.get("kind"),
                  "context": "SlotContext" if self.packed else "CKKSContext",
                  "note": self.note, "predicted_max_error": error}
        return {"name": self.name, "description": self.description,
                "plan": self.plan.to_dict(), "input_domain": domain, "layout_choice": choice}


class Evaluator(Protocol):
    """A model the server can run on ciphertexts of a client's public context."""

    @property
    def info(self) -> ModelInfo: ...

    def bind(self, ctx: Any) -> BoundModel:
        """Compile for ``ctx`` (a public ``veil.he.CKKSContext``, or ``SlotContext`` for the
        packed layout); raise VeilErrors on misuse."""
        ...


def _check_context(ctx: Any, info: ModelInfo) -> None:
    """The context kind, parameters and (packed layout) rotation keys the model's plan needs."""
    check_context_kind(ctx, info.plan, info.name)
    want = info.plan.params
    if ctx.params.describe() != want:
        raise KeyMismatchError(
            f"context parameters {ctx.params.describe()} differ from the model's {want}; "
            "generate the context with the parameters of GET /model"
        )
    if info.packed and tuple(ctx.rotations) != info.rotations:
        raise KeyMismatchError(
            f"context has Galois keys for rotations {list(ctx.rotations)[:12]}, the model's "
            f"plan needs exactly {list(info.rotations)}; generate it with "
            "SlotContext.generate(params, plan.input_encoding['rotations'])")


class LinearEvaluator:
    """``y = x @ weight + bias`` in the ``batched`` layout: depth 1, no Galois keys.

    The server holds ``weight`` (features × outputs) and ``bias`` in plaintext; it learns the
    batch's row count and nothing about the values. The client learns the outputs, which is
    what a prediction reveals in any case. Needs only numpy and ``veil.he`` (no torch).
    """

    def __init__(self, name: str, weight: Any, bias: Any, *, params: Any | None = None,
                 description: str = "", domain: tuple[float, float] | None = None) -> None:
        import numpy as np

        from veil.he import CKKSParams

        weight = np.asarray(weight, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[1],):
            raise ConfigurationError(
                f"linear model needs weight (features, outputs) and bias (outputs,), got "
                f"{weight.shape} and {bias.shape}"
            )
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ConfigurationError("linear model weights contain NaN or inf; retrain the model")
        self.weight, self.bias = weight, bias
        params = CKKSParams.for_depth(1) if params is None else params
        plan = PublicPlan("batched", (int(weight.shape[0]),), int(weight.shape[1]), 1,
                          params.describe(), False, {"kind": "features"},
                          (("affine", "linear", int(weight.shape[0]), int(weight.shape[1]), 1),))
        self._info = ModelInfo(name, plan, description, check_domain(domain))

    @property
    def info(self) -> ModelInfo:
        return self._info

    def bind(self, ctx: Any) -> BoundModel:
        from veil.he.lattice.ckks import linear_combination

        _check_context(ctx, self._info)
        weight_t = self.weight.T.copy()  # (outputs, features): one output per row
        features = self.weight.shape[0]

        def run(cts: Sequence[Any], n_samples: int, windows: int) -> list[Any]:
            if len(cts) != features or windows:
                raise ConfigurationError(
                    f"model {self._info.name!r} takes {features} feature ciphertexts "
                    f"(layout 'batched'), got {len(cts)}"
                )
            return list(linear_combination(list(cts), weight_t, self.bias))

        return run


class CompiledEvaluator:
    """A torch model compiled with ``veil.models`` (``plan`` + ``compile``) for each context.

    ``net`` is an ``nn.Module`` or a ``veil.models`` program with weights. ``domain`` is the
    declared input range ``(low, high)``, published in ``GET /model`` so that clients refuse (or
    clip) inputs outside it before encrypting; the single layout plans for it (the packed
    layout's parameters and predicted error hold for inputs in it; without one it assumes
    ``(0, 1)`` and publishes that). ``precision_bits``/``integer_bits`` are passed to
    :func:`veil.models.plan` (smaller values can fit a smaller, faster ring).
    """

    def __init__(self, name: str, net: Any, input_shape: tuple[int, ...], *,
                 layout: str = "batched", description: str = "",
                 domain: tuple[float, float] | None = None, precision_bits: int | None = None,
                 integer_bits: int = 19) -> None:
        from veil import models

        self.net, self.input_shape, self.layout = net, tuple(input_shape), layout
        domain = check_domain(domain)
        extra = {} if domain is None or layout != "single" else {"domain": domain}
        self.plan = models.plan(net, self.input_shape, layout=layout,
                                precision_bits=precision_bits, integer_bits=integer_bits,
                                **extra)
        public = self.plan.public()
        if domain is None and is_packed(public):  # the domain the packed plan's error holds for
            domain = check_domain(public.input_encoding["domain"])
        self._info = ModelInfo(name, public, description, domain, self.plan.note,
                               self.plan.predicted_error)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def bind(self, ctx: Any) -> BoundModel:
        from veil import models

        _check_context(ctx, self._info)
        compiled = models.compile(self.net, ctx, self.plan)

        def run(cts: Sequence[Any], n_samples: int, windows: int) -> list[Any]:
            enc = models.EncryptedValues(self.layout, n_samples, list(cts), windows)
            return list(compiled(enc).tensors)

        return run


_DIGITS_CACHE: dict[str, LinearEvaluator] = {}


def digits_linear() -> LinearEvaluator:
    """A linear classifier for scikit-learn's bundled digits (8×8 images, 64 → 10 scores).

    Inputs are pixel intensities scaled to [0, 1] (``load_digits().data / 16``); outputs are 10
    class scores (argmax = predicted digit). Fitted in closed form (ridge regression onto one-hot
    labels, lambda = 1), so it is deterministic and takes milliseconds; about 94.5 % training
    accuracy, close to logistic regression on this data.
    """
    if "digits" not in _DIGITS_CACHE:
        import numpy as np
        from sklearn.datasets import load_digits

        data = load_digits()
        x = np.hstack([data.data / 16.0, np.ones((len(data.data), 1))])
        y = np.eye(10)[data.target]
        coef = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
        acc = float((np.argmax(x @ coef, axis=1) == data.target).mean())
        _DIGITS_CACHE["digits"] = LinearEvaluator(
            "linear:digits", coef[:-1], coef[-1],
            description="ridge linear classifier on sklearn digits; input: 64 pixels / 16; "
            f"output: 10 class scores (training accuracy {acc:.3f})", domain=(0.0, 1.0),
        )
    return _DIGITS_CACHE["digits"]


def zoo_evaluator(name: str, *, layout: str = "batched") -> CompiledEvaluator:
    """A ``veil.models.zoo`` model; ReLU/MaxPool models are made HE-friendly by ``models.fix``.

    ``fix`` replaces ReLU by a degree-4 polynomial fitted on [-6, 6] (a different function:
    the description says so and states the accuracy of what is actually served).
    """
    from veil import models
    from veil.models import zoo

    if name not in zoo.names():
        raise ConfigurationError(f"unknown zoo model {name!r}; choose one of {zoo.names()}")
    entry = zoo.load(name)
    net, note = entry.model, "trained as served"
    if models.validate(net, scheme="ckks", input_shape=entry.input_shape):
        net = models.fix(net, relu="poly", domain=(-6, 6), degree=4)
        note = "ReLU replaced by a degree-4 polynomial on [-6, 6]"
    import torch

    with torch.no_grad():
        acc = float((net(entry.x_test).argmax(1) == entry.y_test).float().mean())
    kwargs: dict[str, Any] = {}
    if layout == "batched":
        kwargs = _smaller_ring(models.plan(net, entry.input_shape))
    return CompiledEvaluator(
        f"zoo:{name}", net, entry.input_shape, layout=layout, domain=(0.0, 1.0),
        description=f"veil.models.zoo {name!r} ({note}); input: digits pixels in [0, 1], shape "
        f"{entry.input_shape}; output: 10 logits; plaintext test accuracy of the served "
        f"function {acc:.3f}", **kwargs,
    )


def _smaller_ring(plan: Any) -> dict[str, Any]:
    """``plan`` arguments for a zoo model in a smaller ring than 40-bit precision needs, if any.

    Inputs in [0, 1] keep every intermediate value of the zoo models below ``2**9``, so 9
    integer bits suffice; the ring is the one 28-bit precision fits, with the most precision
    that still fits it (e.g. ``digits-mlp``: N = 8192 at 28 bits instead of 16384: half the
    request size and about half the evaluation time).
    """
    from veil.he import CKKSParams

    ring = CKKSParams.for_depth(plan.depth, precision_bits=28, integer_bits=9).poly_modulus_degree
    if ring >= plan.params.poly_modulus_degree:
        return {}
    best = max(p for p in range(28, 41) if CKKSParams.for_depth(
        plan.depth, precision_bits=p, integer_bits=9).poly_modulus_degree == ring)
    return {"precision_bits": best, "integer_bits": 9}


_BUILTIN: dict[str, Callable[[], Evaluator]] = {"linear:digits": digits_linear}


def file_evaluator(path: str, *, layout: str = "batched", input_shape: Any = None,
                   domain: Any = None) -> CompiledEvaluator:
    """Your own model, saved with ``veil.models.save(net, path, input_shape=..., domain=...)``.

    The file is read with ``torch.load(weights_only=True)`` (no code runs). ``input_shape``,
    when given, must equal the file's; ``domain`` overrides the file's declared input range.
    """
    from pathlib import Path

    from veil.models import zoo

    saved = zoo.load_saved(path)
    if input_shape is not None and tuple(int(v) for v in input_shape) != saved.input_shape:
        raise ConfigurationError(
            f"--input-shape {tuple(input_shape)} differs from the shape {saved.input_shape} "
            f"saved in {path!r}; omit it or save the model with the right input_shape")
    dom = check_domain(domain) if domain is not None else saved.domain
    return CompiledEvaluator(
        Path(path).name, saved.program, saved.input_shape, layout=layout, domain=dom,
        description=f"user model {Path(path).name!r}; input shape {saved.input_shape}"
        + ("" if dom is None else f", values in [{dom[0]:g}, {dom[1]:g}]"),
    )


def load_evaluator(spec: str, *, input_shape: Any = None, domain: Any = None) -> Evaluator:
    """Resolve a model spec: ``linear:digits``, ``zoo:NAME`` / ``zoo:NAME:single``, or the path
    of a file written by ``veil.models.save`` (``PATH`` or ``PATH:single``).

    ``input_shape`` and ``domain`` apply to model files only (see :func:`file_evaluator`).
    """
    if not isinstance(spec, str):
        raise ConfigurationError(f"model spec must be a string, got {type(spec).__name__}")
    if (input_shape is not None or domain is not None) and (
            spec in _BUILTIN or spec.startswith("zoo:")):
        raise ConfigurationError(
            f"input shape and domain are fixed for {spec!r}; they apply to model files only")
    if spec in _BUILTIN:
        return _BUILTIN[spec]()
    parts = spec.split(":")
    if parts[0] == "zoo" and len(parts) in (2, 3):
        layout = parts[2] if len(parts) == 3 else "batched"
        if layout not in ("batched", "single"):
            raise ConfigurationError(f"layout in {spec!r} must be 'batched' or 'single'")
        return zoo_evaluator(parts[1], layout=layout)
    import os

    path, layout = spec, "batched"
    if spec.endswith((":single", ":batched")) and not os.path.exists(spec):
        path, layout = spec.rsplit(":", 1)
    if os.path.exists(path) or path.endswith(".pt"):
        return file_evaluator(path, layout=layout, input_shape=input_shape, domain=domain)
    raise ConfigurationError(
        f"unknown model {spec!r}; use one of {sorted(_BUILTIN)}, 'zoo:NAME[:single]' for a "
        "model of veil.models.zoo, or the path of a file written by veil.models.save"
    )


def check_domain(domain: Any) -> tuple[float, float] | None:
    """A declared input domain ``(low, high)`` with finite ``low < high`` (or None)."""
    from veil.models.approx import check_domain as check_pair

    return None if domain is None else check_pair(domain, "input domain")


def check_rows(x: Any, info: ModelInfo) -> Any:
    """Client-side input check: a float array of rows of the model's input shape, finite."""
    import numpy as np

    arr = np.asarray(x, dtype=np.float64)
    shape = info.input_shape
    width = math.prod(shape)
    if arr.size == 0 and arr.ndim >= 1 and arr.shape[0] == 0:
        raise ConfigurationError(
            f"the input has no rows (shape {np.shape(x)}); pass at least one row of shape "
            f"{shape} to model {info.name!r}"
        )
    if arr.shape in (shape, (width,)):
        arr = arr.reshape(1, width)
    elif arr.ndim >= 2 and arr.shape[1:] in (shape, (width,)) and arr.shape[0] >= 1:
        arr = arr.reshape(arr.shape[0], width)
    else:
        raise ConfigurationError(
            f"model {info.name!r} takes rows of shape {shape} (or {width} values), got an "
            f"array of shape {np.shape(x)}"
        )
    if not np.isfinite(arr).all():
        raise ConfigurationError("input contains NaN or inf; CKKS cannot encode them")
    return arr
