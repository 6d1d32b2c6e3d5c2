"""Messages between an encrypted-inference client and server (wire format, no pickle).

An inference message is a Veil envelope (:mod:`veil.he.serialize`) whose body is a small JSON
header plus a list of binary frames (each frame one serialized ``CKKSTensor`` envelope)::

    header_len  4 bytes big-endian   then header_len bytes of UTF-8 JSON (an object)
    count       4 bytes big-endian   then, count times: length (8 bytes) + that many bytes

:func:`unpack_frames` checks the envelope (size limit first), then every length against the
bytes actually present and the frame-count limit, before anything is parsed; the header is parsed
by the bounded :func:`veil.he.serialize.load_json` (size, depth and integer-length limits); every
failure is a :class:`~veil.errors.SerializationError`. Kinds used by ``veil.models``:

``models.encrypted``  an encrypted input or output (header: layout, n_samples, windows, sizes)
``models.plan``       the public plan of a served model (header only: JSON, no frames):
                      :class:`PublicPlan`, the typed, versioned client/server agreement

What a message reveals to whoever sees it: the header (layout, number of samples, tensor sizes,
the model's public plan) and ciphertexts, which reveal nothing about the values without the key.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, fields
from typing import Any

from veil.errors import SerializationError
from veil.he import serialize as envelope

__all__ = ["pack_frames", "unpack_frames", "KIND_ENCRYPTED", "KIND_PLAN", "MAX_FRAMES",
           "PublicPlan", "PLAN_VERSION"]

KIND_ENCRYPTED = "models.encrypted"
KIND_PLAN = "models.plan"
MAX_FRAMES = 1 << 16
MAX_HEADER = 1 << 20
MAX_HEADER_DEPTH = 32
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def pack_frames(kind: str, header: dict[str, Any], frames: list[bytes]) -> bytes:
    """Envelope of ``kind`` holding a JSON ``header`` and binary ``frames``."""
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(frames) > MAX_FRAMES:
        raise SerializationError(
            f"message too large: header {len(head)} bytes (max {MAX_HEADER}), {len(frames)} "
            f"frames (max {MAX_FRAMES}); send fewer tensors per message"
        )
    parts = [_U32.pack(len(head)), head, _U32.pack(len(frames))]
    for f in frames:
        parts += [_U64.pack(len(f)), bytes(f)]
    return envelope.pack(kind, b"".join(parts))


def unpack_frames(
    data: bytes, kind: str, *, max_bytes: int = envelope.DEFAULT_MAX_BYTES,
    max_frames: int = MAX_FRAMES,
) -> tuple[dict[str, Any], list[bytes]]:
    """Check and open a message from :func:`pack_frames`; returns ``(header, frames)``."""
    body = envelope.unpack(data, kind=kind, max_bytes=max_bytes).body
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(body):
            raise SerializationError(
                f"{kind} message truncated: {what} needs {n} bytes at offset {pos}, "
                f"{len(body) - pos} left"
            )
        chunk = body[pos : pos + n]
        pos += n
        return chunk

    (hlen,) = _U32.unpack(take(4, "header length"))
    if hlen > MAX_HEADER:
        raise SerializationError(f"{kind} header of {hlen} bytes exceeds {MAX_HEADER}")
    header = envelope.load_json(take(hlen, "header"), what=f"{kind} header",
                                max_bytes=MAX_HEADER, max_depth=MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise SerializationError(f"{kind} header must be a JSON object")
    (count,) = _U32.unpack(take(4, "frame count"))
    if count > max_frames:
        raise SerializationError(f"{kind} message has {count} frames, more than {max_frames}")
    frames = []
    for i in range(count):
        (n,) = _U64.unpack(take(8, f"length of frame {i}"))
        frames.append(take(n, f"frame {i}"))
    if pos != len(body):
        raise SerializationError(f"{kind} message has {len(body) - pos} trailing bytes")
    return header, frames


# -- the public plan: what a client and a server agree on --------------------------------------

PLAN_VERSION = 1
LAYOUTS = ("batched", "single")
PARAM_KEYS = frozenset({"scheme", "poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits"})
SCHEME_KEYS: dict[str, frozenset[str]] = {  # "ckks": TenSEAL; "ckks-slots": veil.he SlotParams
    "ckks": PARAM_KEYS, "ckks-slots": PARAM_KEYS | {"output_scale_bits"}}
ENCODING_KEYS: dict[str, frozenset[str]] = {
    "features": frozenset({"kind"}),
    "vector": frozenset({"kind"}),
    "im2col": frozenset({"kind", "kernel_size", "stride", "padding"}),
    "taps": frozenset({"kind", "taps", "lanes", "outputs", "gather"}),
    "packed": frozenset({"kind", "mode", "ciphertexts", "outputs", "slots", "period", "copies",
                         "babies", "rotations", "domain", "calibrated"}),  # + "gather"
}
MAX_ROTATIONS = 256  # veil.he.lattice.slots.MAX_STEPS


def _int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ints(v: Any, low: int = 0, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(_int(x, low) for x in v))


def _bad(what: str, value: Any) -> SerializationError:
    return SerializationError(f"public plan: invalid {what} {value!r:.120}")


@dataclass(frozen=True)
class PublicPlan:
    """The public agreement between an inference client and server (typed, versioned, frozen).

    What the client needs to make its context and encrypt its inputs, and what the server
    checks uploads against: the layout, the per-sample input shape, the output size, the depth,
    the CKKS parameters (``CKKSParams.describe()`` form), whether Galois keys are needed, the
    input encoding (``{"kind": "features" | "vector" | "im2col" | "taps", ...}``) and the stage
    table ``[kind, layers, in_size, out_size, depth]``. No weights. Made by
    :meth:`veil.models.Plan.public`; sent as JSON (:meth:`to_dict`, the ``plan`` of
    ``GET /model``) or as a ``models.plan`` envelope (:meth:`serialize`). :meth:`from_dict`
    is strict: a missing or unknown key, a wrong type or another ``version`` is a
    :class:`~veil.errors.SerializationError`.
    """

    layout: str
    input_shape: tuple[int, ...]
    output_size: int
    depth: int
    params: dict[str, Any]
    galois_keys: bool
    input_encoding: dict[str, Any]
    stages: tuple[tuple[str, str, int, int, int], ...] = ()
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (fresh lists and dicts: changing it changes nothing here)."""
        return json.loads(json.dumps({
            "version": self.version, "layout": self.layout,
            "input_shape": list(self.input_shape), "output_size": self.output_size,
            "depth": self.depth, "params": self.params, "galois_keys": self.galois_keys,
            "input_encoding": self.input_encoding, "stages": [list(s) for s in self.stages]}))

    @classmethod
    def from_dict(cls, data: Any) -> PublicPlan:
        """Check and rebuild a plan from :meth:`to_dict` output (e.g. a server's JSON)."""
        if not isinstance(data, dict):
            raise SerializationError(f"public plan must be a JSON object, got {data!r:.80}")
        want = {f.name for f in fields(cls)}
        if set(data) != want:
            missing, unknown = sorted(want - set(data)), sorted(set(data) - want)
            raise SerializationError(
                f"public plan: missing keys {missing}, unknown keys {unknown}; client and "
                "server must run the same Veil version")
        if data["version"] != PLAN_VERSION or not _int(data["version"]):
            raise SerializationError(
                f"public plan version {data['version']!r:.20} is not {PLAN_VERSION}, the version "
                "this Veil speaks; upgrade Veil on the client or the server")
        _check_fields(data)
        return cls(data["layout"], tuple(data["input_shape"]), data["output_size"],
                   data["depth"], dict(data["params"]), data["galois_keys"],
                   json.loads(json.dumps(data["input_encoding"])),
                   tuple(tuple(s) for s in data["stages"]), data["version"])

    def serialize(self) -> bytes:
        """A ``models.plan`` envelope: the JSON of :meth:`to_dict` as header, no frames."""
        return pack_frames(KIND_PLAN, self.to_dict(), [])

    @classmethod
    def load(cls, data: bytes) -> PublicPlan:
        """Parse :meth:`serialize` output, checking everything (:meth:`from_dict`)."""
        header, _ = unpack_frames(data, KIND_PLAN, max_frames=0)
        return cls.from_dict(header)


def _check_fields(d: dict[str, Any]) -> None:
    if d["layout"] not in LAYOUTS:
        raise _bad("layout", d["layout"])
    if not _ints(d["input_shape"], 1) or not d["input_shape"]:
        raise _bad("input_shape", d["input_shape"])
    if not _int(d["output_size"], 1):
        raise _bad("output_size", d["output_size"])
    if not _int(d["depth"]):
        raise _bad("depth", d["depth"])
    if not isinstance(d["galois_keys"], bool):
        raise _bad("galois_keys", d["galois_keys"])
    p = d["params"]
    if (not isinstance(p, dict) or SCHEME_KEYS.get(p.get("scheme")) != set(p)
            or not _int(p["poly_modulus_degree"], 2) or not _ints(p["coeff_mod_bit_sizes"], 1)
            or not _int(p["scale_bits"], 1) or not _int(p.get("output_scale_bits", 1), 1)):
        raise _bad("params", p)
    packed = d["input_encoding"].get("kind") == "packed" if isinstance(
        d["input_encoding"], dict) else False
    if packed != (p["scheme"] == "ckks-slots") or packed and d["layout"] != "single":
        raise SerializationError(
            "public plan: the packed encoding goes with the single layout and ckks-slots "
            f"parameters, got layout {d['layout']!r:.20} and parameters {p!r:.120}; upgrade "
            "Veil on the client or the server")
    _check_encoding(d["input_encoding"], p)
    st = d["stages"]
    if not isinstance(st, list) or not all(
            isinstance(s, list) and len(s) == 5 and all(isinstance(v, str) for v in s[:2])
            and all(_int(v) for v in s[2:]) for s in st):
        raise _bad("stages", st)


def _packed_ok(e: dict[str, Any], params: dict[str, Any]) -> bool:
    """A packed encoding a client can encrypt with (integer geometry, steps, finite domain)."""
    gather, domain, rots = e.get("gather", []), e["domain"], e["rotations"]
    return (e["mode"] in ("gather", "shared", "client-baby")
            and ("gather" in e) == (e["mode"] != "client-baby")
            and all(_int(e[k], 1) for k in ("ciphertexts", "outputs", "slots", "period",
                                              "copies"))
            and e["slots"] == params["poly_modulus_degree"] // 2
            and _ints(e["babies"], 0) and isinstance(gather, list)
            and all(_ints(row, -1) for row in gather)
            and isinstance(rots, list) and len(rots) <= MAX_ROTATIONS
            and all(_int(v, 1) and v < e["slots"] for v in rots)
            and isinstance(e["calibrated"], bool)
            and isinstance(domain, list) and len(domain) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in domain) and domain[0] < domain[1])


def _check_encoding(e: Any, params: dict[str, Any]) -> None:
    kind = e.get("kind") if isinstance(e, dict) else None
    keys = set(e) - {"gather"} if kind == "packed" else set(e) if isinstance(e, dict) else None
    if not isinstance(kind, str) or ENCODING_KEYS.get(kind) != keys:
        raise _bad("input_encoding", e)
    ok = True
    if kind == "packed":
        ok = _packed_ok(e, params)
    if kind == "im2col":
        ok = (_ints(e["kernel_size"], 1, 2) and _int(e["stride"], 1)
              and _ints(e["padding"], 0, 2))
    elif kind == "taps":
        gather = e["gather"]
        ok = (_int(e["taps"], 1) and _int(e["lanes"], 1) and _int(e["outputs"], 1)
              and isinstance(gather, list) and bool(gather)
              and all(_ints(row, -1, e["taps"]) for row in gather))
    if not ok:
        raise _bad("input_encoding", e)
