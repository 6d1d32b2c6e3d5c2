"""The client's view of one layout a server offers: plan, context, upload state, encoding.

:func:`read_layouts` reads ``GET /model`` (its ``layouts`` list, or for a server of an earlier
version the top-level description of its one layout) into one :class:`RemoteLayout` per
layout, strictly checked; parameters are rebuilt under the *client's* security rule. Used by
:class:`veil.serve.Client`, which holds one secret context (and uploads one public context) per
layout it actually uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError, VeilError
from veil.serve.evaluator import ModelInfo, check_domain
from veil.serve.plans import check_context_kind, params_from_description, public_plan_from_json

__all__ = ["RemoteLayout", "read_layouts", "check_given_context", "fitting_layout"]


@dataclass
class RemoteLayout:
    """One offered layout: its description, parameters and this client's context for it."""

    info: ModelInfo
    params: Any
    limits: dict[str, int]
    cost: dict[str, Any] = field(default_factory=dict)
    context: Any = None  # the client's secret context for this layout (made on first use)
    public: bytes | None = None  # its serialized public part (stable id)
    context_id: str | None = None  # set once the server holds it

    @property
    def layout(self) -> str:
        return self.info.layout

    @property
    def rows_per_request(self) -> int:
        return int(self.params.slots) if self.layout == "batched" else 1

    def entry(self) -> dict[str, Any]:
        """What :func:`veil.serve.layouts.choose_layout` reads."""
        return {"cost": self.cost, "rows_per_request": self.rows_per_request}

    def make_context(self) -> Any:
        """A fresh secret context of the kind and keys this layout's plan needs."""
        if self.info.packed:
            from veil.he.lattice.slots import SlotContext

            return SlotContext.generate(self.params, self.info.rotations)
        from veil.he import CKKSContext

        return CKKSContext.generate(self.params, galois_keys=self.info.galois_keys)

    def encrypt(self, ctx: Any, chunk: Any) -> tuple[list[bytes], dict[str, Any]]:
        """Encrypt rows in this layout (the ``models.encrypted`` frames and header)."""
        import numpy as np

        info = self.info
        if info.layout == "batched":
            frames = [ctx.encrypt(np.ascontiguousarray(chunk[:, i])).serialize()
                      for i in range(chunk.shape[1])]
            return frames, {"layout": "batched", "n_samples": chunk.shape[0], "windows": 0,
                            "count": len(frames)}
        from veil import models  # the single layout may need im2col encoding

        enc = models.encrypt_input(ctx, chunk.reshape(1, *info.input_shape), info.plan)
        frames = [t.serialize() for t in enc.tensors]
        return frames, {"layout": "single", "n_samples": 1, "windows": enc.windows,
                        "count": len(frames)}

    def decrypt(self, ctx: Any, outs: list[Any], n: int) -> Any:
        """The ``(n, outputs)`` plaintext of the server's answer, its shape checked first."""
        from veil import models

        info = self.info
        if info.layout == "batched":
            if len(outs) != info.output_size:
                raise SerializationError(
                    f"server answered {len(outs)} output ciphertexts, expected "
                    f"{info.output_size}")
            if any(t.shape != (n,) for t in outs):
                raise SerializationError("server's answer holds the wrong number of rows")
        elif sum(t.size for t in outs) < info.output_size:
            raise SerializationError(
                f"server's answer holds {sum(t.size for t in outs)} values, expected at "
                f"least {info.output_size}")
        # the single layout's answer may carry padding (taps layout): keep output_size values
        enc = models.EncryptedValues(info.layout, n, outs, 0,
                                     info.output_size if info.layout == "single" else 0)
        return models.decrypt_output(ctx, enc)


def _read_one(data: dict[str, Any], name: str, top_domain: Any,
              allow_insecure: bool) -> RemoteLayout:
    domain = data.get("input_domain", top_domain)
    choice = data.get("layout_choice") or {}
    error = choice.get("predicted_max_error")
    info = ModelInfo(name, public_plan_from_json(data["plan"]),
                     str(data.get("description", "")),
                     None if domain is None else check_domain(domain),
                     str(choice.get("note", "")), None if error is None else float(error))
    params = params_from_description(info.plan.params, allow_insecure=allow_insecure)
    limits = {k: int(data["limits"][k]) for k in ("max_request_bytes", "max_context_bytes")}
    cost = data.get("cost") or {}
    if not isinstance(cost, dict):
        raise TypeError("cost must be an object")
    return RemoteLayout(info, params, limits, cost)


def read_layouts(data: dict[str, Any], url: str,
                 allow_insecure: bool) -> tuple[dict[str, RemoteLayout], str]:
    """``({layout: RemoteLayout}, default layout)`` of a ``GET /model`` answer."""
    try:
        name = str(data["name"])
        entries = data.get("layouts") or [data]  # an earlier server: its one layout
        if not isinstance(entries, list):
            raise TypeError("layouts must be a list")
        out: dict[str, RemoteLayout] = {}
        for entry in entries:
            got = _read_one(entry, name, data.get("input_domain"), allow_insecure)
            if "layout" in entry and entry["layout"] != got.layout:
                raise ValueError(f"layout {entry['layout']!r} with a {got.layout!r} plan")
            out[got.layout] = got
        default = str(data.get("default_layout") or next(iter(out)))
        if default not in out:
            raise ValueError(f"default layout {default!r} is not offered")
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as exc:
        if isinstance(exc, VeilError):
            raise
        raise SerializationError(
            f"server's model description is malformed ({exc!r}); is {url} a "
            "Veil server of the same version?") from exc
    return out, default


def check_given_context(ctx: Any, lay: RemoteLayout) -> None:
    """A user's ``Client(context=...)`` against a layout's plan: kind, parameters, keys."""
    info, params = lay.info, lay.params
    check_context_kind(ctx, info.plan, info.name)
    if ctx.params.describe() != params.describe():
        raise KeyMismatchError(
            f"the given context has parameters {ctx.params.describe()}, the server's model "
            f"needs {params.describe()}; create the context with the server's parameters (or "
            "let the Client generate it)")
    if info.packed and tuple(ctx.rotations) != info.rotations:
        raise KeyMismatchError(
            f"the given context has Galois keys for rotations {list(ctx.rotations)[:12]}, the "
            f"server's model needs exactly {list(info.rotations)}; generate it with "
            "SlotContext.generate(params, rotations) from GET /model (or let the Client do it)")


def fitting_layout(ctx: Any, layouts: dict[str, RemoteLayout], default: str) -> str:
    """The layout a given context fits (the default's error when it fits none)."""
    for name, lay in layouts.items():
        try:
            check_given_context(ctx, lay)
        except (ConfigurationError, KeyMismatchError):
            continue
        return name
    check_given_context(ctx, layouts[default])
    raise AssertionError("unreachable")  # pragma: no cover
