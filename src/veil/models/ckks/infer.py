"""CKKS inference: the server runs a model on encrypted inputs with the public context only.

Roles: the **client** holds the secret key; it encrypts inputs (:func:`encrypt_input`) and
decrypts outputs (:func:`decrypt_output`). The **server** holds the model in plaintext and a
public context (no secret key needed, none used): :func:`compile` returns a
:class:`CompiledModel` it calls on encrypted inputs. The server learns the layout, the number of
samples and nothing about their values; the client learns the model's outputs (logits) and the
public plan (architecture sizes, depth), not the weights. Outputs decrypted with CKKS carry
approximation noise that depends on the weights; a client that must not learn more than the
logits (model extraction) needs extra measures (rounding, returning only labels) not done here.

Layouts:

* ``"batched"``: one ciphertext per input feature, holding that feature of up to ``slots``
  samples (more samples use more ciphertexts per feature, transparently). Linear layers are
  plaintext-weighted linear combinations of ciphertexts (no rotations, no Galois keys),
  activations are element-wise polynomials. Throughput: thousands of samples per call.
* ``"single"``: one sample packed in a vector; affine layers are vector x matrix products
  (rotations: Galois keys needed); a first convolution on a one-channel image uses im2col
  encoding (one vector per output channel), later convolutions are dense matrices. Latency.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, DepthExhaustedError, VeilError
from veil.models.ckks.lanes import LanesModel, LanesSpec, encode_taps
from veil.models.ckks.packed import PackedSpec
from veil.models.ckks.packrun import PackedModel, encode_packed
from veil.models.ckks.plan import Plan, lanes_lowering
from veil.models.ckks.single import packed_lowering
from veil.models.ckks.stages import Stage, as_program, check_slots, depths, lower
from veil.models.ckks.values import EncryptedValues
from veil.models.ir import Program
from veil.protocols.inference import PublicPlan

__all__ = ["EncryptedValues", "CompiledModel", "compile", "encrypt_input", "decrypt_output"]


def encrypt_input(ctx: Any, x: Any, plan: Plan | PublicPlan) -> EncryptedValues:
    """Client: encrypt ``x`` in the layout of ``plan`` (a :class:`Plan` or a
    :class:`~veil.protocols.inference.PublicPlan`, e.g. ``PublicPlan.from_dict`` of a server's).

    Batched: ``x`` of shape ``(n, *input_shape)``. Single: one sample, ``input_shape`` or
    ``(1, *input_shape)``. Values must be finite and below the parameters' ``max_abs_value``.
    """
    info = plan.public() if isinstance(plan, Plan) else plan
    if not isinstance(info, PublicPlan):
        raise ConfigurationError(
            f"encrypt_input needs a models.Plan or a PublicPlan, got {type(plan).__name__}; "
            "rebuild a server's JSON plan with PublicPlan.from_dict"
        )
    layout, shape = info.layout, tuple(info.input_shape)
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    feats = math.prod(shape)
    if layout == "batched":
        if arr.ndim < 1 or arr.size == 0 or arr.size % feats or arr.shape[1:] not in (shape,
                                                                                     (feats,)):
            raise ConfigurationError(
                f"batched input must have shape (n, {', '.join(map(str, shape))}), got "
                f"{arr.shape}"
            )
        cols = arr.reshape(-1, feats)
        return EncryptedValues("batched", cols.shape[0],
                               [ctx.encrypt(np.ascontiguousarray(cols[:, f]))
                                for f in range(feats)])
    if arr.shape not in (shape, (1, *shape)):
        raise ConfigurationError(
            f"single-sample input must have shape {shape} or (1, *{shape}), got {arr.shape}; "
            "use layout='batched' for many samples"
        )
    enc = info.input_encoding
    if enc["kind"] == "packed":
        return _encrypt_packed(ctx, arr, enc)
    if enc["kind"] == "taps":
        vecs = encode_taps(arr.reshape(-1), enc, ctx.params.slots)
        return EncryptedValues("single", 1, [ctx.encrypt(v) for v in vecs])
    if enc["kind"] == "im2col":
        ph, pw = enc["padding"]
        img = np.pad(arr.reshape(shape)[0], ((ph, ph), (pw, pw)))
        t, windows = ctx.encrypt_im2col(img, tuple(enc["kernel_size"]), enc["stride"])
        return EncryptedValues("single", 1, [t], windows)
    return EncryptedValues("single", 1, [ctx.encrypt(arr.reshape(-1))])


def _encrypt_packed(ctx: Any, arr: np.ndarray, enc: dict[str, Any]) -> EncryptedValues:
    """The packed layout's client ciphertexts (a :class:`veil.he.SlotContext` is needed)."""
    from veil.he.lattice.slots import SlotContext

    if not isinstance(ctx, SlotContext):
        raise ConfigurationError(
            f"this plan uses the packed single-sample layout, which needs the context from "
            f"plan.keygen() (a veil.he.SlotContext), not a {type(ctx).__name__}")
    lo, hi = enc.get("domain", (-np.inf, np.inf))
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ConfigurationError(
            f"input values span [{arr.min():g}, {arr.max():g}] outside the declared domain "
            f"[{lo:g}, {hi:g}] the plan's error guarantee is for; scale the input into it")
    vecs = encode_packed(arr.reshape(-1), enc, ctx.slots)
    return EncryptedValues("single", 1, [ctx.encrypt(v) for v in vecs])


def decrypt_output(ctx: Any, out: EncryptedValues) -> np.ndarray:
    """Client: decrypt a model output to an array of shape ``(n_samples, outputs)``."""
    if not isinstance(out, EncryptedValues):
        raise ConfigurationError(f"expected EncryptedValues, got {type(out).__name__}")
    parts = [np.asarray(ctx.decrypt(t), dtype=np.float64).reshape(-1) for t in out.tensors]
    if out.layout == "batched":
        return np.stack(parts, axis=1)
    flat = np.concatenate(parts)
    return (flat[: out.outputs] if out.outputs else flat)[None, :]


class CompiledModel:
    """A model ready to run on encrypted inputs under one public context (server side).

    Holds the plaintext weights (composed into per-stage matrices) and the context; never needs
    or uses a secret key. Call it on :class:`EncryptedValues` made by :func:`encrypt_input`.
    """

    def __init__(self, prog: Program, stages: list[Stage], ctx: Any, public: PublicPlan,
                 depth: int) -> None:
        self._prog, self._stages, self._ctx = prog, stages, ctx
        self.layout, self.depth = public.layout, depth
        self._public = public
        self._bias_cache: dict[str, Any] = {}

    def public(self) -> PublicPlan:
        """The public plan clients encrypt with (layout, input shape and encoding, parameters)."""
        return self._public

    @property
    def input_size(self) -> int:
        return math.prod(self._prog.input_shape)

    def __call__(self, enc: EncryptedValues) -> EncryptedValues:
        if not isinstance(enc, EncryptedValues):
            raise ConfigurationError(
                f"expected EncryptedValues (from models.encrypt_input), got {type(enc).__name__}"
            )
        if enc.layout != self.layout:
            raise ConfigurationError(
                f"input is in the {enc.layout!r} layout but the model was compiled for "
                f"{self.layout!r}; encrypt with this model's public()"
            )
        kind = self._public.input_encoding["kind"]
        want_im2col = kind == "im2col"
        if (enc.windows > 0) != want_im2col or (not want_im2col and enc.size != self.input_size):
            raise ConfigurationError(
                f"encrypted input holds {enc.size} values per sample (im2col windows "
                f"{enc.windows}); this model expects {self.input_size} values encoded as "
                f"{kind}"
            )
        run = self._batched if self.layout == "batched" else self._single
        env: dict[str, list[Any]] = {self._prog.input_name: list(enc.tensors)}
        for stage in self._stages:
            env[stage.name] = run(stage, [env[i] for i in stage.inputs], enc.windows)
        return EncryptedValues(self.layout, enc.n_samples, env[self._prog.output])

    def _batched(self, st: Stage, ins: list[list[Any]], windows: int) -> list[Any]:
        from veil.he.lattice.ckks import linear_combination

        x = ins[0]
        if st.kind == "affine":
            if st.data["identity"]:
                return x
            return linear_combination(x, st.data["matrix"].T, st.data["bias"])
        if st.kind == "poly":
            return [t.polyval(st.data["coeffs"]) for t in x]
        if st.kind == "add":
            return [a + b for a, b in zip(ins[0], ins[1])]
        flat = [t for seg in ins for t in seg]  # cat
        return [flat[i] for i in st.data["perm"]]

    def _encrypted_bias(self, st: Stage) -> Any:
        """The bias of a single-layout affine stage, encrypted once with the public key.

        TenSEAL packs an encrypted vector replicated across the slots and its vector x matrix
        product relies on that; a plain vector operand is encoded zero-padded instead and would
        corrupt the next product. An encryption of the (server-known) bias has the same layout.
        """
        key = st.name
        if key not in self._bias_cache:
            self._bias_cache[key] = self._ctx.encrypt(st.data["bias"])
        return self._bias_cache[key]

    def _single(self, st: Stage, ins: list[list[Any]], windows: int) -> list[Any]:
        x = ins[0]
        if st.kind == "im2col":
            out = []
            for kernel, b in zip(st.data["kernels"], st.data["bias"]):
                out.append(x[0].conv2d_im2col(kernel, windows) + float(b))
            return out
        if st.kind == "affine":
            if st.data["identity"]:
                return x
            m, acc, off = st.data["matrix"], None, 0
            for seg in x:
                block = m[off : off + seg.size]
                off += seg.size
                if not block.any():
                    continue
                part = seg.matmul(block)
                acc = part if acc is None else acc + part
            if acc is None:
                raise ConfigurationError(f"{st.layers}: all-zero weight matrix")
            return [acc + self._encrypted_bias(st)] if st.data["bias"].any() else [acc]
        if st.kind == "poly":
            return [t.polyval(st.data["coeffs"]) for t in x]
        if st.kind == "add":
            a, b = ins
            if [t.size for t in a] != [t.size for t in b]:
                raise ConfigurationError(
                    f"{st.layers}: residual branches are packed differently in the single "
                    "layout; use layout='batched' for this model"
                )
            return [p + q for p, q in zip(a, b)]
        if st.data["perm"] != list(range(len(st.data["perm"]))):
            raise ConfigurationError(f"{st.layers}: unsupported concatenation order")
        return [t for seg in ins for t in seg]


def compile(net: Any, ctx: Any, plan: Plan) -> CompiledModel | LanesModel | PackedModel:
    """Server: prepare ``net`` for encrypted inference under ``ctx`` with ``plan``.

    ``plan`` is ``models.plan(net, input_shape, layout=...)``: its layout, input shape, stages
    and parameters are used as they are (nothing is planned again); ``net`` supplies the
    weights (a public context is enough). Before anything runs it checks that ``plan`` fits
    ``net`` (same input shape and stages) and ``ctx`` (:class:`DepthExhaustedError` naming the
    layer when ``ctx`` has too few levels, Galois keys when the plan needs them, then the
    plan's exact parameters); each mismatch is a :class:`ConfigurationError` saying how to fix it.
    """
    if not isinstance(plan, Plan):
        raise ConfigurationError(
            f"compile needs the models.Plan of this net, got {type(plan).__name__}; pass "
            "models.compile(net, ctx, models.plan(net, input_shape, layout=...))"
        )
    prog = _program_for(net, plan)
    if not prog.has_params:
        raise ConfigurationError("compile needs the model with its weights (server side)")
    if plan.lanes is not None:
        return _compile_lanes(prog, ctx, plan)
    if plan.packed is not None:
        return _compile_packed(prog, ctx, plan)
    stages = lower(prog, plan.layout)
    _check_stages(stages, plan)
    used = depths(stages, prog)
    _check_context(ctx, plan, used[prog.output], stages, used)
    check_slots(stages, ctx.params.slots, plan.layout, prog)
    return CompiledModel(prog, stages, ctx, plan.public(), used[prog.output])


def _refit(detail: str, plan: Plan) -> ConfigurationError:
    return ConfigurationError(
        f"the plan does not fit this net: {detail}; make the plan from the net you compile: "
        f"models.plan(net, {tuple(plan.input_shape)}, layout={plan.layout!r})"
    )


def _program_for(net: Any, plan: Plan) -> Program:
    """``net`` converted for the plan's input shape (a clear error when it does not take it)."""
    shape = tuple(plan.input_shape)
    if isinstance(net, Program) and tuple(net.input_shape) != shape:
        raise _refit(f"the plan is for input shape {shape}, the program takes "
                     f"{tuple(net.input_shape)}", plan)
    try:
        return as_program(net, shape)
    except (VeilError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise _refit(f"the net does not run on inputs of the plan's shape {shape} ({exc})",
                     plan) from exc


def _check_stages(stages: list[Stage], plan: Plan) -> None:
    def rows(ss: list[Stage]) -> list[tuple[str, int, int, int]]:
        return [(s.kind, s.in_size, s.out_size, s.depth) for s in ss]

    have, want = rows(stages), rows(plan.stages)
    if have != want:
        i = next((k for k, (a, b) in enumerate(zip(have, want)) if a != b),
                 min(len(have), len(want)))
        got = f"{have[i][0]} {have[i][1]} -> {have[i][2]}" if i < len(have) else "nothing"
        exp = f"{want[i][0]} {want[i][1]} -> {want[i][2]}" if i < len(want) else "nothing"
        raise _refit(f"stage {i} of the net is {got}, the plan has {exp}", plan)


def _check_context(ctx: Any, plan: Plan, depth: int, stages: list[Stage],
                   used: dict[str, int]) -> None:
    """The context has the levels, the Galois keys and the exact parameters of ``plan``."""
    params = ctx.params
    if depth > params.depth:
        culprit = next((s.layers for s in stages if used[s.name] > params.depth), "the output")
        raise DepthExhaustedError(
            f"the model needs depth {depth} but the context provides {params.depth}; it runs out "
            f"at {culprit}. Create the context from models.plan(net, input_shape, "
            f"layout={plan.layout!r}).params"
        )
    if plan.galois_keys and not ctx.has_galois_keys:
        raise ConfigurationError(
            "the single-sample layout uses rotations and needs Galois keys; generate the "
            "context with galois_keys=True (or use layout='batched', which needs none)"
        )
    if params.describe() != plan.params.describe():
        raise ConfigurationError(
            f"the context was made with parameters {params.describe()}, the plan needs "
            f"{plan.params.describe()}; generate it with he.CKKSContext.generate(plan.params, "
            "galois_keys=plan.galois_keys)"
        )


def _compile_lanes(prog: Program, ctx: Any, plan: Plan) -> LanesModel:
    """The taps-layout model (:mod:`veil.models.ckks.lanes`) of a plan that uses it."""
    stages, spec = lanes_lowering(prog, plan.params.slots)
    if not isinstance(spec, LanesSpec):
        raise _refit(f"the plan uses the taps layout, which this net does not fit ({spec})", plan)
    if spec.encoding() != plan.input_encoding:
        raise _refit("the taps geometry (receptive fields, lanes) differs from the plan's", plan)
    params = ctx.params
    if spec.depth > params.depth:
        raise DepthExhaustedError(
            f"the model needs depth {spec.depth} in the single-sample (taps) layout but the "
            f"context provides {params.depth}; create the context from models.plan(net, "
            "input_shape, layout='single').params"
        )
    if not ctx.has_galois_keys:
        raise ConfigurationError(
            "the single-sample layout sums blocks with rotations and needs Galois keys; "
            "generate the context with galois_keys=True (or use layout='batched')"
        )
    _check_context(ctx, plan, spec.depth, stages, {})
    return LanesModel(spec, ctx, plan.public(), math.prod(prog.input_shape))


def _compile_packed(prog: Program, ctx: Any, plan: Plan) -> PackedModel:
    """The packed-layout model (:mod:`veil.models.ckks.packed`) of a plan that uses it."""
    from veil.he.lattice.slots import SlotContext

    if not isinstance(ctx, SlotContext):
        raise ConfigurationError(
            "this plan uses the packed single-sample layout, which runs on a veil.he."
            f"SlotContext (plan.keygen().public()), not a {type(ctx).__name__}")
    stages, spec = packed_lowering(prog, plan.params.slots)
    if not isinstance(spec, PackedSpec):
        raise _refit(f"the plan uses the packed layout, which this net does not fit ({spec})",
                     plan)
    enc = {**spec.encoding(), "domain": plan.input_encoding.get("domain"),
           "calibrated": plan.input_encoding.get("calibrated")}
    if enc != plan.input_encoding:
        raise _refit("the packed geometry (receptive fields, periods) differs from the plan's",
                     plan)
    if ctx.params.describe() != plan.params.describe():
        raise ConfigurationError(
            f"the context was made with parameters {ctx.params.describe()}, the plan needs "
            f"{plan.params.describe()}; make it with plan.keygen()")
    return PackedModel(spec, ctx, plan.public(), math.prod(prog.input_shape))
