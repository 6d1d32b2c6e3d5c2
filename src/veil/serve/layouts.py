"""One served model in one or both CKKS layouts, their cost hints, and the client's choice.

A :class:`ServedModel` holds one :class:`~veil.serve.evaluator.Evaluator` per layout it offers
(``batched``: up to ``slots`` rows per request, one ciphertext per input feature; ``single``:
one row per request, usually the packed layout on a ``SlotContext``), the default layout first.
``veil serve --model zoo:NAME`` offers both when the model's single-sample plan is the packed
one (fast, Galois keys for a few rotations only), else ``batched`` alone;
``zoo:NAME:batched`` / ``zoo:NAME:single`` (and ``--layouts``) pin the layouts.

Each layout is described in ``GET /model`` (``layouts``: :func:`layout_json`) with what a
client needs for it (plan, context kind and keys, limits) and a cost hint (:func:`cost_hint`):
predicted seconds per request and bytes of a request and of the public context. The single
layout's figures are the plan's own cost model (:mod:`veil.models.ckks.cost`); the batched
layout's are an operation count priced with the same per-operation times (one plaintext
product per weight, one ciphertext product per activation level and neuron). They rank the
layouts, they are not measurements.

:func:`choose_layout` is the client's rule: ``rows`` rows cost ``rows`` single requests or
``ceil(rows / slots)`` batched ones, each its predicted seconds plus :data:`REQUEST_OVERHEAD_S`
plus its request bytes at :data:`TRANSFER_S_PER_BYTE` (encrypting, serializing, sending and
parsing: on a 2-core machine this is most of a batched request's time, 3.1 of 5.8 s for
``zoo:digits-mlp``); the cheaper wins (ties: single). Without both hints, batched from
:data:`BATCH_THRESHOLD` rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veil.errors import ConfigurationError
from veil.serve.evaluator import Evaluator, ModelInfo, load_evaluator, zoo_evaluator
from veil.serve.plans import is_packed, params_from_description

__all__ = ["LAYOUTS", "ServedModel", "load_model", "as_served", "parse_layouts", "cost_hint",
           "layout_json", "choose_layout", "BATCH_THRESHOLD", "REQUEST_OVERHEAD_S",
           "TRANSFER_S_PER_BYTE"]

LAYOUTS = ("batched", "single")
BATCH_THRESHOLD = 32  # rows from which a client without cost hints sends one batched request
REQUEST_OVERHEAD_S = 0.02  # serialization, HTTP and hand-off per request (loopback, measured)
# seconds per request byte beyond the compute (5.76 s measured - 2.68 s predicted - overhead,
# over 30.2 MB of one batched zoo:digits-mlp request; 2-core machine, loopback)
TRANSFER_S_PER_BYTE = 1.0e-7


@dataclass(frozen=True)
class ServedModel:
    """The layouts one server offers for one model: ``{layout: Evaluator}``, default first."""

    evaluators: Mapping[str, Evaluator]

    def __post_init__(self) -> None:
        if not self.evaluators:
            raise ConfigurationError("a served model needs at least one layout")
        for layout, ev in self.evaluators.items():
            if ev.info.layout != layout:
                raise ConfigurationError(
                    f"evaluator {ev.info.name!r} runs the {ev.info.layout!r} layout, not "
                    f"{layout!r}")
        object.__setattr__(self, "evaluators", dict(self.evaluators))

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(self.evaluators)

    @property
    def default(self) -> str:
        """The layout of requests that name none (the first offered)."""
        return next(iter(self.evaluators))

    @property
    def info(self) -> ModelInfo:
        """The default layout's description (the top level of ``GET /model``)."""
        return self.evaluators[self.default].info

    def get(self, layout: str | None) -> Evaluator:
        """The evaluator of ``layout`` (None: the default); ConfigurationError if not offered."""
        layout = self.default if layout is None else layout
        if layout not in self.evaluators:
            raise ConfigurationError(
                f"model {self.info.name!r} is not served in the {str(layout)[:40]!r} layout; "
                f"this server offers {list(self.layouts)} (GET /model: layouts). Use one of "
                "them (Client(layout='auto') chooses), or restart the server with --layouts")
        return self.evaluators[layout]


def parse_layouts(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"batched,single"`` (or a sequence) as a checked tuple; None or empty: the default."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if s]
    if not items:
        return None
    bad = [s for s in items if s not in LAYOUTS]
    if bad or len(set(items)) != len(items):
        raise ConfigurationError(
            f"layouts must be distinct names among {list(LAYOUTS)} (e.g. batched,single), got "
            f"{text!r}")
    return tuple(items)


def load_model(spec: str, layouts: Sequence[str] | None = None, **kwargs: Any) -> ServedModel:
    """The layouts to serve for a model spec (see :func:`veil.serve.evaluator.load_evaluator`).

    A ``:batched`` / ``:single`` suffix pins one layout (``layouts`` must then agree). Without
    a suffix, ``layouts`` (e.g. ``("batched", "single")``) says which to offer; by default a
    ``zoo:NAME`` model offers ``batched`` and, when its single-sample plan is the packed one,
    ``single`` too; other specs offer what :func:`load_evaluator` gives (``batched``).
    """
    pinned = spec.rsplit(":", 1)[1] if spec.count(":") >= 1 and \
        spec.rsplit(":", 1)[1] in LAYOUTS else None
    wanted = parse_layouts(layouts)
    if pinned is not None:
        if wanted is not None and wanted != (pinned,):
            raise ConfigurationError(
                f"model {spec!r} pins the {pinned!r} layout but layouts {list(wanted)} were "
                f"asked for; drop the ':{pinned}' suffix or the --layouts option")
        return ServedModel({pinned: load_evaluator(spec, **kwargs)})
    if wanted is not None and spec.split(":", 1)[0] != "zoo" and not _is_file(spec):
        only = load_evaluator(spec, **kwargs)
        if wanted != (only.info.layout,):
            raise ConfigurationError(
                f"model {spec!r} is served in the {only.info.layout!r} layout only; omit "
                "--layouts or serve a zoo model or a model file")
        return ServedModel({only.info.layout: only})
    if wanted is None:
        first = load_evaluator(spec, **kwargs)
        if not spec.startswith("zoo:") or first.info.layout != "batched":
            return ServedModel({first.info.layout: first})
        single = zoo_evaluator(spec.split(":", 1)[1], layout="single")
        if not single.info.packed:  # taps/generic: SEAL's Galois keys, contexts of 100s of MB
            return ServedModel({"batched": first})
        return ServedModel({"batched": first, "single": single})
    return ServedModel({lay: load_evaluator(f"{spec}:{lay}", **kwargs) for lay in wanted})


def _is_file(spec: str) -> bool:
    import os

    return os.path.exists(spec) or spec.endswith(".pt")


def as_served(model: Any) -> ServedModel:
    """A ServedModel from one, an Evaluator, a spec or ``(spec, layouts)`` (worker start)."""
    if isinstance(model, ServedModel):
        return model
    if isinstance(model, str):
        return load_model(model)
    if isinstance(model, tuple):
        return load_model(model[0], model[1])
    return ServedModel({model.info.layout: model})


def _batched_cost(info: ModelInfo) -> dict[str, Any]:
    from veil.models.ckks.cost import batched_cost

    params = params_from_description(info.plan.params, allow_insecure=True)
    cost = batched_cost(info.plan.stages, params, math.prod(info.input_shape),
                        bool(info.galois_keys))
    return {"predicted_s": round(cost.latency_ms / 1000, 4),
            "request_bytes": int(cost.request_bytes), "context_bytes": int(cost.context_bytes),
            "source": "veil.models operation count (batched layout)"}


def cost_hint(evaluator: Evaluator) -> dict[str, Any]:
    """Predicted seconds per request and bytes of a request and of the public context.

    From the plan's cost model when it has one (``Plan.cost``: single-sample layouts), from an
    operation count for the batched layout, else ``None`` values.
    """
    info = evaluator.info
    cost = getattr(getattr(evaluator, "plan", None), "cost", None)
    if cost is not None:
        return {"predicted_s": round(float(cost.latency_ms) / 1000, 4),
                "request_bytes": int(cost.request_bytes),
                "context_bytes": int(cost.context_bytes),
                "source": f"veil.models plan cost model ({cost.layout} layout)"}
    if info.layout == "batched":
        return _batched_cost(info)
    return {"predicted_s": None, "request_bytes": None, "context_bytes": None, "source": None}


def layout_json(evaluator: Evaluator, limits: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``GET /model``'s ``layouts``: what a client needs to use this layout."""
    info = evaluator.info
    body = info.to_json()
    slots = int(info.plan.params["poly_modulus_degree"]) // 2
    packed = is_packed(info.plan)
    context = {"kind": "SlotContext" if packed else "CKKSContext",
               "galois_keys": bool(info.galois_keys or packed),
               "rotations": list(info.rotations) if packed else None}
    return {"layout": info.layout, "plan": body["plan"], "layout_choice": body["layout_choice"],
            "input_domain": body["input_domain"], "slots": slots,
            "rows_per_request": slots if info.layout == "batched" else 1,
            "context": context, "limits": limits, "cost": cost_hint(evaluator)}


def _request_s(cost: Mapping[str, Any]) -> float:
    """Predicted seconds of one request from its cost hint (compute, overhead, transfer)."""
    return (float(cost["predicted_s"]) + REQUEST_OVERHEAD_S
            + float(cost.get("request_bytes") or 0) * TRANSFER_S_PER_BYTE)


def choose_layout(rows: int, offered: Mapping[str, Mapping[str, Any]], *,
                  threshold: int | None = None) -> str:
    """The layout for a ``predict`` of ``rows`` rows among ``offered`` (``layouts`` entries).

    One layout offered: that one. ``threshold``: batched from that many rows. Otherwise the
    cost hints decide (see the module docstring); without them :data:`BATCH_THRESHOLD`.
    """
    if len(offered) == 1:
        return next(iter(offered))
    if threshold is None:
        try:
            single, batched = (_request_s(offered[k]["cost"]) for k in ("single", "batched"))
            per = max(1, int(offered["batched"]["rows_per_request"]))
        except (KeyError, TypeError, ValueError):
            threshold = BATCH_THRESHOLD
        else:
            return "batched" if math.ceil(rows / per) * batched < rows * single else "single"
    return "batched" if rows >= threshold else "single"
