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
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, DepthExhaustedError, SerializationError
from veil.models.ckks.plan import LAYOUTS, Stage, _depths, as_program, lower
from veil.models.ir import Program

__all__ = ["EncryptedValues", "CompiledModel", "compile", "encrypt_input", "decrypt_output"]


@dataclass
class EncryptedValues:
    """Encrypted model input or output in one of the two layouts.

    ``tensors``: batched layout, one ``CKKSTensor`` of shape ``(n_samples,)`` per feature;
    single layout, the segments (1-D ``CKKSTensor``) whose concatenation is the flattened
    sample (one segment, or one per output channel after an im2col convolution).
    """

    layout: str
    n_samples: int
    tensors: list[Any]
    windows: int = 0  # im2col windows of an encoded input (0: not im2col)
    outputs: int = 0  # single layout: values per sample to keep (0: all); taps-layout outputs

    @property
    def size(self) -> int:
        """Values per sample."""
        return len(self.tensors) if self.layout == "batched" else sum(t.size for t in self.tensors)

    def serialize(self) -> bytes:
        """Envelope ``models.encrypted``: header plus one ``ckks.tensor`` envelope per tensor."""
        from veil.protocols.inference import KIND_ENCRYPTED, pack_frames

        header = {"layout": self.layout, "n_samples": self.n_samples, "windows": self.windows,
                  "count": len(self.tensors), "outputs": self.outputs}
        return pack_frames(KIND_ENCRYPTED, header, [t.serialize() for t in self.tensors])

    @classmethod
    def load(cls, ctx: Any, data: bytes, *, max_bytes: int = 1 << 30) -> EncryptedValues:
        """Parse :meth:`serialize` output under ``ctx`` (public or secret), checking everything."""
        from veil.protocols.inference import KIND_ENCRYPTED, unpack_frames

        header, frames = unpack_frames(data, KIND_ENCRYPTED, max_bytes=max_bytes)
        try:
            layout, n, windows = header["layout"], header["n_samples"], header["windows"]
            outputs = header.get("outputs", 0)
            ok = (layout in LAYOUTS and isinstance(n, int) and n > 0 and isinstance(windows, int)
                  and windows >= 0 and header["count"] == len(frames) and frames
                  and isinstance(outputs, int) and not isinstance(outputs, bool)
                  and outputs >= 0)
        except KeyError as exc:
            raise SerializationError(f"models.encrypted header lacks {exc}") from exc
        if not ok:
            raise SerializationError(f"models.encrypted: invalid header {header!r}")
        tensors = [ctx.load_tensor(f, max_bytes=max_bytes) for f in frames]
        for t in tensors:
            if len(t.shape) != 1 or (layout == "batched" and t.shape != (n,)):
                raise SerializationError(
                    f"models.encrypted: tensor of shape {t.shape} does not fit layout {layout} "
                    f"with {n} samples"
                )
        if outputs and (layout != "single" or sum(t.size for t in tensors) < outputs):
            raise SerializationError(f"models.encrypted: {outputs} outputs do not fit the tensors")
        return cls(layout, n, tensors, windows, outputs)


def encrypt_input(ctx: Any, x: Any, plan: Any) -> EncryptedValues:
    """Client: encrypt ``x`` in the layout of ``plan`` (a :class:`Plan` or its ``summary()``).

    Batched: ``x`` of shape ``(n, *input_shape)``. Single: one sample, ``input_shape`` or
    ``(1, *input_shape)``. Values must be finite and below the parameters' ``max_abs_value``.
    """
    info = plan.summary() if hasattr(plan, "summary") else dict(plan)
    layout, shape = info["layout"], tuple(info["input_shape"])
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
    enc = info["input_encoding"]
    if enc["kind"] == "taps":
        from veil.models.ckks.lanes import encode_taps

        vecs = encode_taps(arr.reshape(-1), enc, ctx.params.slots)
        return EncryptedValues("single", 1, [ctx.encrypt(v) for v in vecs])
    if enc["kind"] == "im2col":
        ph, pw = enc["padding"]
        img = np.pad(arr.reshape(shape)[0], ((ph, ph), (pw, pw)))
        t, windows = ctx.encrypt_im2col(img, tuple(enc["kernel_size"]), enc["stride"])
        return EncryptedValues("single", 1, [t], windows)
    return EncryptedValues("single", 1, [ctx.encrypt(arr.reshape(-1))])


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

    def __init__(self, prog: Program, stages: list[Stage], ctx: Any, layout: str,
                 depth: int, summary: dict[str, Any]) -> None:
        self._prog, self._stages, self._ctx = prog, stages, ctx
        self.layout, self.depth = layout, depth
        self._summary = summary
        self._bias_cache: dict[str, Any] = {}

    def summary(self) -> dict[str, Any]:
        """The public plan clients need (layout, input shape and encoding, parameters)."""
        return dict(self._summary)

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
                f"{self.layout!r}; encrypt with this model's summary()"
            )
        want_im2col = self._summary["input_encoding"]["kind"] == "im2col"
        if (enc.windows > 0) != want_im2col or (not want_im2col and enc.size != self.input_size):
            raise ConfigurationError(
                f"encrypted input holds {enc.size} values per sample (im2col windows "
                f"{enc.windows}); this model expects {self.input_size} values encoded as "
                f"{self._summary['input_encoding']['kind']}"
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


def compile(net: Any, ctx: Any, *, input_shape: Any = None,
            layout: str = "batched") -> CompiledModel:
    """Server: prepare ``net`` for encrypted inference under ``ctx`` (a public context is enough).

    Checks before anything runs that ``ctx`` has the depth the model needs
    (:class:`DepthExhaustedError` naming the layer otherwise), the slots (single layout) and,
    for the single layout, Galois keys.
    """
    prog = as_program(net, input_shape)
    if not prog.has_params:
        raise ConfigurationError("compile needs the model with its weights (server side)")
    if layout == "single":
        fast = _compile_lanes(prog, ctx)
        if fast is not None:
            return fast
    stages = lower(prog, layout)
    used = _depths(stages, prog)
    depth = used[prog.output]
    params = ctx.params
    if depth > params.depth:
        culprit = next(s for s in stages if used[s.name] > params.depth)
        raise DepthExhaustedError(
            f"the model needs depth {depth} but the context provides {params.depth}; it runs out "
            f"at {culprit.layers}. Create the context from models.plan(net, input_shape, "
            f"layout={layout!r}).params"
        )
    if layout == "single" and not ctx.has_galois_keys:
        raise ConfigurationError(
            "the single-sample layout uses rotations and needs Galois keys; generate the "
            "context with galois_keys=True (or use layout='batched', which needs none)"
        )
    from veil.models.ckks.plan import _check_slots

    _check_slots(stages, params.slots, layout, prog)
    enc: dict[str, Any] = {"kind": "features" if layout == "batched" else "vector"}
    if stages and stages[0].kind == "im2col":
        d = stages[0].data
        enc = {"kind": "im2col", "kernel_size": list(d["kernels"].shape[1:]),
               "stride": d["stride"], "padding": d["padding"]}
    summary = {"layout": layout, "input_shape": list(prog.input_shape),
               "output_size": math.prod(prog.op(prog.output).shape), "depth": depth,
               "params": params.describe(), "galois_keys": layout == "single",
               "input_encoding": enc}
    return CompiledModel(prog, stages, ctx, layout, depth, summary)


def _compile_lanes(prog: Program, ctx: Any) -> Any:
    """The taps-layout model (:mod:`veil.models.ckks.lanes`) when ``prog`` qualifies."""
    from veil.models.ckks.lanes import LanesModel, LanesSpec
    from veil.models.ckks.plan import lanes_lowering

    params = ctx.params
    _, spec = lanes_lowering(prog, params.slots)
    if not isinstance(spec, LanesSpec):
        return None
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
    summary = {"layout": "single", "input_shape": list(prog.input_shape),
               "output_size": spec.n_out, "depth": spec.depth, "params": params.describe(),
               "galois_keys": True, "input_encoding": spec.encoding()}
    return LanesModel(spec, ctx, summary, math.prod(prog.input_shape))
