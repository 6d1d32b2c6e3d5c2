"""The two context kinds a served plan can ask for, and reading a server's plan on the client.

Most plans run on a TenSEAL :class:`veil.he.CKKSContext` (parameters ``"scheme": "ckks"``). The
packed single-sample layout (:mod:`veil.models.ckks.packed`, input encoding ``"kind":
"packed"``) runs on a :class:`veil.he.lattice.slots.SlotContext` (parameters ``"scheme":
"ckks-slots"``) holding Galois keys for exactly the plan's rotation steps
(``input_encoding["rotations"]``), not SEAL's default set: a public context of a few tens of MB.

:func:`params_from_description` rebuilds either parameter kind under the *caller's* security
rule; :func:`public_plan_from_json` reads the ``plan`` of ``GET /model`` for both (the packed
encoding is checked field by field here, everything else by
:meth:`veil.protocols.inference.PublicPlan.from_dict`).
"""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.inference import ENCODING_KEYS, SCHEME_KEYS, PublicPlan

__all__ = ["params_from_description", "public_plan_from_json", "is_packed", "plan_rotations",
           "context_kind", "check_context_kind", "CKKS_KEYS", "SLOT_KEYS", "PACKED_KEYS"]

CKKS_KEYS = SCHEME_KEYS["ckks"]
SLOT_KEYS = SCHEME_KEYS["ckks-slots"]
PACKED_KEYS = ENCODING_KEYS["packed"]


def is_packed(plan: PublicPlan) -> bool:
    """Whether ``plan`` uses the packed single-sample layout (a SlotContext)."""
    return isinstance(plan.input_encoding, dict) and plan.input_encoding.get("kind") == "packed"


def plan_rotations(plan: PublicPlan) -> tuple[int, ...]:
    """The rotation steps a packed plan's context needs Galois keys for, as a SlotContext
    stores them (left shifts in ``[1, slots)``, sorted); ``()`` for other plans."""
    if not is_packed(plan):
        return ()
    slots = int(plan.params["poly_modulus_degree"]) // 2
    return tuple(sorted({int(s) % slots for s in plan.input_encoding["rotations"]} - {0}))


def context_kind(plan: PublicPlan) -> str:
    """The class name of the context ``plan`` runs on (for messages)."""
    return "veil.he.lattice.slots.SlotContext" if is_packed(plan) else "veil.he.CKKSContext"


def check_context_kind(ctx: Any, plan: PublicPlan, model: str) -> None:
    """ConfigurationError unless ``ctx`` is the kind of context ``plan`` runs on."""
    from veil.he import CKKSContext
    from veil.he.lattice.slots import SlotContext

    want = SlotContext if is_packed(plan) else CKKSContext
    if not isinstance(ctx, want):
        how = ("SlotContext.generate(params, rotations) with the parameters and "
               "input_encoding['rotations'] of GET /model, or plan.keygen()" if is_packed(plan)
               else "CKKSContext.generate(params, galois_keys=...) with the plan of GET /model")
        layout = "the packed single-sample layout" if is_packed(plan) else \
            f"the {plan.layout} layout ({plan.input_encoding.get('kind')} encoding)"
        raise ConfigurationError(
            f"model {model!r} uses {layout}, which runs on a {context_kind(plan)}, but the "
            f"context given is a {type(ctx).__name__}; omit context= to let the client make "
            f"the right one, or make it with {how}")


def _int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ints(v: Any, low: int) -> bool:
    return isinstance(v, list) and all(_int(x, low) for x in v)


def params_from_description(desc: Any, *, allow_insecure: bool = False) -> Any:
    """Rebuild ``CKKSParams`` (``"scheme": "ckks"``) or ``SlotParams`` (``"ckks-slots"``) from
    a ``describe()`` dict, with the caller's own security check.

    A server cannot talk a client into weak parameters: only the caller's ``allow_insecure``
    counts (nothing in the description can set it).
    """
    from veil.he import CKKSParams
    from veil.he.lattice.slotparams import SlotParams

    scheme = desc.get("scheme") if isinstance(desc, dict) else None
    keys = SLOT_KEYS if scheme == "ckks-slots" else CKKS_KEYS
    if scheme not in ("ckks", "ckks-slots") or set(desc) != keys:
        raise SerializationError(
            f"server's CKKS parameters must be an object with exactly {sorted(CKKS_KEYS)} and "
            f"scheme 'ckks' (or also 'output_scale_bits' and scheme 'ckks-slots'), got "
            f"{desc!r:.200}; upgrade Veil on the client or the server")
    bits = desc["coeff_mod_bit_sizes"]
    if not isinstance(bits, list):
        raise SerializationError(f"coeff_mod_bit_sizes must be a list, got {bits!r:.80}")
    if scheme == "ckks":
        return CKKSParams(desc["poly_modulus_degree"], tuple(bits), desc["scale_bits"],
                          allow_insecure=allow_insecure)
    if not all(_int(desc[k], 1) for k in ("poly_modulus_degree", "scale_bits",
                                          "output_scale_bits")) or not _ints(bits, 1):
        raise SerializationError(f"ckks-slots parameters must be positive integers, got "
                                 f"{desc!r:.200}")
    return SlotParams(desc["poly_modulus_degree"], tuple(bits), desc["scale_bits"],
                      desc["output_scale_bits"], allow_insecure=allow_insecure)


def public_plan_from_json(data: Any) -> PublicPlan:
    """The :class:`PublicPlan` of a ``GET /model`` answer's ``plan``, strictly checked
    (``PublicPlan.from_dict``: packed plans need the single layout, ckks-slots parameters and
    a well-formed packed encoding)."""
    return PublicPlan.from_dict(data)
