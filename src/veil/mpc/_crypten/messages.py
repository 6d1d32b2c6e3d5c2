"""Safe object messages between parties: no pickle on anything another process sent.

CrypTen's ``send_obj`` / ``broadcast_obj`` pickle the object and ``recv_obj`` / the receiving side
of ``broadcast_obj`` unpickle it with ``crypten.common.serial.RestrictedUnpickler``. That
unpickler has an allowlist, but the allowlist is broad (torch modules, storages rebuilt through
torch's legacy loader) and can be extended at run time (``register_safe_class``, which
``crypten.load_from_party`` does for a caller-chosen class); the size header is a peer-chosen
int32 used to allocate the receive buffer before anything is checked.

:func:`veil.mpc._crypten.install` replaces the three methods of CrypTen's
``DistributedCommunicator`` (:func:`send_obj`, :func:`recv_obj`, :func:`broadcast_obj`) with a
pickle-free encoding (tagged JSON) that can carry exactly what MPC code exchanges: ``None``,
bools, ints, floats, strings, bytes, lists, tuples, dicts, ``torch.Size``, ``torch.device`` and
plain numeric tensors. Anything else is refused at the *sender* with a clear error. On receipt,
the size header is checked against :data:`MAX_MESSAGE_BYTES` before any buffer is allocated, and
the payload is checked (magic, JSON, tags, nesting depth, tensor byte counts) before any object is
built. Every failure raises :class:`~veil.errors.SerializationError`.

On the dealer, requests from party 0 are also checked against what CrypTen's dealer serves
(:func:`check_dealer_request`): CrypTen would otherwise call any method named in the request and
any ``torch`` function named as the op.

What is revealed: exactly the object sent, to the receiving party (or to every party of the
group for ``broadcast_obj``); message sizes are visible to the network as before.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from veil.errors import SerializationError, UnsupportedOperationError

__all__ = [
    "MAX_MESSAGE_BYTES", "MAGIC", "encode", "decode", "check_dealer_request", "send_obj",
    "recv_obj", "broadcast_obj", "refuse_pickle", "refuse_register",
]

MAGIC = b"VLM1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # 64 MiB: shapes and dealer requests are tiny
MAX_DEPTH = 32
_TENSOR_DTYPES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
    "float64",
)


# ------------------------------------------------------------------------------ encoding


def _enc(obj: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise UnsupportedOperationError(
            f"message nesting deeper than {MAX_DEPTH} levels; flatten the object"
        )
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return {"$f": repr(obj)}
    if isinstance(obj, bytes | bytearray):
        return {"$b": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, list):
        return [_enc(v, depth + 1) for v in obj]
    import torch

    if isinstance(obj, torch.Size):
        return {"$size": [int(s) for s in obj]}
    if isinstance(obj, tuple):
        return {"$t": [_enc(v, depth + 1) for v in obj]}
    if isinstance(obj, dict):
        return {"$d": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in obj.items()]}
    if isinstance(obj, torch.device):
        return {"$dev": str(obj)}
    if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:
        dtype = str(obj.dtype).removeprefix("torch.")
        if dtype not in _TENSOR_DTYPES:
            raise UnsupportedOperationError(
                f"tensors of dtype {obj.dtype} cannot be sent as messages; use one of "
                f"{_TENSOR_DTYPES}"
            )
        data = obj.detach().cpu().contiguous()
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        return {"$tensor": [dtype, list(data.shape), base64.b64encode(raw).decode("ascii")]}
    raise UnsupportedOperationError(
        f"objects of type {type(obj).__module__}.{type(obj).__qualname__} cannot be sent "
        "between parties (Veil never unpickles what another party sent); send tensors, "
        "numbers, strings, lists, tuples, dicts or torch.Size instead"
    )


def encode(obj: Any) -> bytes:
    """The wire form of ``obj``: ``MAGIC`` followed by tagged JSON (never pickle)."""
    body = json.dumps(_enc(obj, 0), separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + body


def _bad(what: str) -> SerializationError:
    return SerializationError(f"malformed message from another party: {what}; refusing it")


def _dec(node: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _bad(f"nesting deeper than {MAX_DEPTH} levels")
    if node is None or isinstance(node, bool | int | str):
        return node
    if isinstance(node, list):
        return [_dec(v, depth + 1) for v in node]
    if not isinstance(node, dict) or len(node) != 1:
        raise _bad(f"unexpected JSON value of type {type(node).__name__}")
    (tag, value), = node.items()
    if tag == "$f" and isinstance(value, str):
        try:
            return float(value)
        except ValueError as exc:
            raise _bad(f"bad float {value[:40]!r}") from exc
    if tag == "$b" and isinstance(value, str):
        return _b64(value)
    if tag == "$t" and isinstance(value, list):
        return tuple(_dec(v, depth + 1) for v in value)
    if tag == "$d" and isinstance(value, list):
        out = {}
        for pair in value:
            if not isinstance(pair, list) or len(pair) != 2:
                raise _bad("dict entry is not a [key, value] pair")
            key = _dec(pair[0], depth + 1)
            try:
                out[key] = _dec(pair[1], depth + 1)
            except TypeError as exc:
                raise _bad(f"unhashable dict key of type {type(key).__name__}") from exc
        return out
    import torch

    if tag == "$size" and isinstance(value, list) and all(_is_dim(v) for v in value):
        return torch.Size(value)
    if tag == "$dev" and isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError as exc:
            raise _bad(f"bad device {value[:40]!r}") from exc
    if tag == "$tensor" and isinstance(value, list) and len(value) == 3:
        return _dec_tensor(*value)
    raise _bad(f"unknown tag {str(tag)[:40]!r}")


def _is_dim(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise _bad("bad base64 data") from exc


def _dec_tensor(dtype: Any, shape: Any, data: Any) -> Any:
    import torch

    if dtype not in _TENSOR_DTYPES or not isinstance(shape, list) or not isinstance(data, str):
        raise _bad(f"bad tensor header (dtype {str(dtype)[:20]!r})")
    if not all(_is_dim(s) for s in shape):
        raise _bad(f"bad tensor shape {shape[:8]!r}")
    tdtype = getattr(torch, dtype)
    raw = _b64(data)
    numel = 1
    for s in shape:
        numel *= s
    itemsize = torch.empty((), dtype=tdtype).element_size()
    if numel * itemsize != len(raw):
        raise _bad(f"tensor of shape {shape} and dtype {dtype} needs {numel * itemsize} bytes, "
                   f"got {len(raw)}")
    if not raw:
        return torch.empty(shape, dtype=tdtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return flat.view(tdtype).reshape(shape).clone()


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int | None = None) -> Any:
    """Rebuild an object from :func:`encode`'s output; raises ``SerializationError`` if bad."""
    limit = MAX_MESSAGE_BYTES if max_bytes is None else max_bytes
    if len(data) > limit:
        raise SerializationError(
            f"message of {len(data)} bytes exceeds the {limit}-byte limit; refusing it"
        )
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC:
        raise _bad(f"bad magic {data[:4]!r} (a pickle or a peer without Veil?)")
    try:
        tree = json.loads(data[len(MAGIC) :].decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"invalid JSON ({type(exc).__name__})") from exc
    try:
        return _dec(tree, 0)
    except RecursionError as exc:  # pragma: no cover - MAX_DEPTH catches it first
        raise _bad("nesting too deep") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"constant {name} is not allowed")


# -------------------------------------------------------------------- dealer requests

# CrypTen's dealer runs ``getattr(self, message["function"])(*args, **kwargs)`` and, for
# "additive", ``getattr(torch, op)(a, b, ...)``: only these names and shapes are let through.
_DEALER_SIZES = {"additive": 2, "square": 1, "binary": 2, "wraps": 1, "B2A": 1}
_DEALER_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")
_CONV_KWARGS = ("stride", "padding", "dilation", "groups", "output_padding")
MAX_DEALER_ELEMENTS = 1 << 28  # per requested tensor (2 GiB of int64)


def _small_ints(v: Any) -> bool:
    if isinstance(v, tuple):
        return len(v) <= 8 and all(_small_ints(x) for x in v)
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31


def check_dealer_request(obj: Any) -> Any:
    """Validate a request that party 0 sends the dealer; returns it or raises
    ``SerializationError`` (nothing outside CrypTen's five triple functions, its six ops and
    tensors of at most ``MAX_DEALER_ELEMENTS`` elements)."""
    import re

    import torch

    if obj == "terminate":
        return obj
    if not isinstance(obj, dict) or set(obj) != {"function", "device", "args", "kwargs"}:
        raise _bad("a dealer request must be a dict with function, device, args, kwargs")
    fn, device, args, kwargs = obj["function"], obj["device"], obj["args"], obj["kwargs"]
    if fn not in _DEALER_SIZES:
        raise _bad(f"dealer function {str(fn)[:40]!r} is not one of {sorted(_DEALER_SIZES)}")
    if device is not None and not (
            isinstance(device, str) and re.fullmatch(r"cpu|cuda(:\d{1,3})?", device)):
        raise _bad(f"dealer device {str(device)[:40]!r} is not cpu or cuda[:N]")
    n = _DEALER_SIZES[fn]
    if not isinstance(args, tuple) or len(args) < n or not isinstance(kwargs, dict):
        raise _bad(f"dealer request {fn!r} needs {n} sizes")
    for size in args[:n]:
        if not isinstance(size, torch.Size) or len(size) > 8:
            raise _bad(f"dealer request {fn!r}: bad size {size!r}")
        numel = 1
        for d in size:
            numel *= d
        if numel > MAX_DEALER_ELEMENTS:
            raise _bad(f"dealer request {fn!r} for {numel} elements (at most "
                       f"{MAX_DEALER_ELEMENTS})")
    rest = args[n:]
    if fn == "additive":
        if not rest or rest[0] not in _DEALER_OPS:
            raise _bad(f"dealer op {str(rest[:1])[:40]} is not one of {_DEALER_OPS}")
        rest = rest[1:]
    if not all(_small_ints(v) for v in rest) or len(rest) > 5:
        raise _bad(f"dealer request {fn!r}: unexpected extra arguments")
    if any(k not in _CONV_KWARGS or not _small_ints(v) for k, v in kwargs.items()) or (
            kwargs and fn != "additive"):
        raise _bad(f"dealer request {fn!r}: unexpected keyword arguments {sorted(kwargs)[:5]}")
    return obj


def _check_size_reply(obj: Any) -> None:
    import torch

    numel = 1
    for d in obj if isinstance(obj, torch.Size) else ():
        numel *= d
    if not isinstance(obj, torch.Size) or len(obj) > 8 or numel > MAX_DEALER_ELEMENTS:
        raise _bad(f"the dealer announced a result of size {str(obj)[:60]} (a torch.Size of at "
                   f"most {MAX_DEALER_ELEMENTS} elements expected)")


# ------------------------------------------------------------------------- communicator


def _check_size(size: int, src: int) -> int:
    if not 0 < size <= MAX_MESSAGE_BYTES:
        raise SerializationError(
            f"party {src} announced a message of {size} bytes; allowed are 1..{MAX_MESSAGE_BYTES} "
            "(raise veil.mpc._crypten.messages.MAX_MESSAGE_BYTES on every party for larger objects)"
        )
    return size


def _bytes_tensor(buf: bytes) -> Any:
    import torch

    return torch.frombuffer(bytearray(buf), dtype=torch.uint8)


def _record(comm: Any, group: Any, *, sent: int = 0, received: int = 0) -> None:
    from veil.mpc import accounting

    accounting.record(comm, group, sent=sent, received=received)


def send_obj(self: Any, obj: Any, dst: int, group: Any = None) -> None:
    """Send ``obj`` to party ``dst`` (Veil's encoding; replaces CrypTen's pickle)."""
    import torch
    import torch.distributed as dist

    group = self.main_group if group is None else group
    buf = encode(obj)
    size = torch.tensor([len(buf)], dtype=torch.int64)
    reqs = [dist.isend(size, dst=dst, group=group),
            dist.isend(_bytes_tensor(buf), dst=dst, group=group)]
    for req in reqs:
        req.wait()
    _record(self, group, sent=8 + len(buf))


def recv_obj(self: Any, src: int, group: Any = None) -> Any:
    """Receive an object from party ``src``; size-checked before allocation, never unpickled."""
    import torch
    import torch.distributed as dist

    group = self.main_group if group is None else group
    size = torch.zeros(1, dtype=torch.int64)
    dist.irecv(size, src=src, group=group).wait()
    n = _check_size(int(size.item()), src)
    data = torch.empty(n, dtype=torch.uint8)
    dist.irecv(data, src=src, group=group).wait()
    _record(self, group, received=8 + n)
    obj = decode(data.numpy().tobytes())
    if group is getattr(self, "ttp_group", None):
        if self.get_rank() == self.get_ttp_rank():
            obj = check_dealer_request(obj)  # this process is the dealer, party 0 is asking
        elif src == self.get_ttp_rank():
            _check_size_reply(obj)  # party 0 allocates a tensor of this size next
    return obj


def broadcast_obj(self: Any, obj: Any, src: int, group: Any = None) -> Any:
    """Broadcast ``obj`` from ``src``; receivers check size and format, never unpickle."""
    import torch
    import torch.distributed as dist

    group = self.main_group if group is None else group
    if self.get_rank() == src:
        if obj is None:
            raise SerializationError(f"party {src} must provide the object it broadcasts")
        buf = encode(obj)
        dist.broadcast(torch.tensor([len(buf)], dtype=torch.int64), src, group=group)
        dist.broadcast(_bytes_tensor(buf), src, group=group)
        peers = dist.get_world_size(group) - 1
        _record(self, group, sent=peers * (8 + len(buf)))
        return obj
    size = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(size, src, group=group)
    n = _check_size(int(size.item()), src)
    data = torch.empty(n, dtype=torch.uint8)
    dist.broadcast(data, src, group=group)
    _record(self, group, received=8 + n)
    return decode(data.numpy().tobytes())


def refuse_pickle(_data: Any) -> Any:
    """Replaces ``crypten.common.serial.restricted_loads``: nothing from a peer is unpickled."""
    raise SerializationError(
        "CrypTen tried to unpickle bytes that crossed a process boundary; Veil refuses all "
        "unpickling of peer data (use veil.mpc's messages: tensors, numbers, tuples, dicts)"
    )


def refuse_register(input_class: Any) -> None:
    """Replaces ``crypten.common.serial.register_safe_class``: the allowlist cannot grow."""
    raise UnsupportedOperationError(
        f"registering {input_class!r} as safe to unpickle is disabled by Veil: no object from "
        "another party is ever unpickled"
    )
