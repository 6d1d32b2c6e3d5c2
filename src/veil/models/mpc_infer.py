"""Secret-shared inference of torch models with ``veil.mpc`` (CrypTen under the hood).

Roles and what each learns:

* the **model owner** holds the weights; it secret-shares every parameter. It learns the batch
  size of the input (the shape of the shared input), nothing else.
* the **data owner** holds the input; it secret-shares it and is the only party the output
  (logits, or only the predicted label with ``output="label"``) is revealed to.
* any further party (``parties=3``) only computes on shares and learns nothing but the
  architecture and the batch size.

The **architecture** (layer kinds, shapes, strides, polynomial coefficients) is public: every
party needs it to run the same computation. The model owner broadcasts it as JSON (shared and
revealed as bytes; never pickle) so other parties may pass ``None``; a party that already has it
(``models.architecture(net, input_shape)``) may pass it and has it checked. Weights never leave
the model owner in the clear; the input never leaves the data owner in the clear.

Numerics are CrypTen's fixed point (``precision_bits``, default 16) and its approximations of
non-linear functions (relu and max pooling are exact up to fixed point; sigmoid, tanh, GELU,
softmax and LayerNorm's inverse square root are approximations).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import ConfigurationError
from veil.models.ir import Op, Program

__all__ = [
    "mpc_forward",
    "mpc_inference",
    "architecture",
    "program_to_json",
    "program_from_json",
    "mpc_kernel",
]

MAX_ARCH_BYTES = 1 << 20
MPC_KERNELS: dict[str, Callable[..., Any]] = {}


def mpc_kernel(*kinds: str) -> Callable[[Callable], Callable]:
    """Decorator: register the MPC implementation ``fn(party, op, params, *inputs)`` of kinds."""

    def deco(fn: Callable) -> Callable:
        for k in kinds:
            MPC_KERNELS[k] = fn
        return fn

    return deco


def architecture(net: Any, input_shape: Any) -> Program:
    """The public architecture of ``net`` (no weights): what every MPC party may know."""
    from veil.models.convert import to_program

    return to_program(net, input_shape, "mpc").public()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(a) for a in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(a) for k, a in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigurationError(f"architecture attribute {v!r} is not JSON-serializable")


def _tuples(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuples(a) for a in v)
    if isinstance(v, dict):
        return {k: _tuples(a) for k, a in v.items()}
    return v


def program_to_json(prog: Program) -> bytes:
    """Canonical JSON of the public architecture of ``prog`` (weights are never included)."""
    doc = {
        "veil": "architecture/1",
        "input": [prog.input_name, list(prog.input_shape)],
        "output": prog.output,
        "ops": [
            [op.name, op.kind, list(op.inputs), list(op.shape), _jsonable(op.attrs),
             _jsonable(op.param_shapes), op.position, op.source]
            for op in prog.ops
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def program_from_json(data: bytes) -> Program:
    """Parse an architecture produced by :func:`program_to_json` (size-limited, checked)."""
    if len(data) > MAX_ARCH_BYTES:
        raise ConfigurationError(
            f"architecture of {len(data)} bytes exceeds the {MAX_ARCH_BYTES}-byte limit"
        )
    from veil.models.ir import PLAIN_KERNELS

    try:
        from veil.he.serialize import load_json

        doc = load_json(data, what="model architecture", max_bytes=MAX_ARCH_BYTES, max_depth=32)
        if not isinstance(doc, dict) or doc.get("veil") != "architecture/1":
            raise ValueError("not a Veil architecture document")
        in_name, in_shape = doc["input"]
        ops = []
        for name, kind, inputs, shape, attrs, pshapes, pos, src in doc["ops"]:
            if kind not in PLAIN_KERNELS:
                raise ValueError(f"unknown op kind {kind!r}")
            ops.append(Op(str(name), str(kind), tuple(map(str, inputs)),
                          tuple(int(s) for s in shape), _tuples(attrs), None,
                          {k: tuple(int(s) for s in v) for k, v in pshapes.items()},
                          int(pos), str(src)))
        return Program(str(in_name), tuple(int(s) for s in in_shape), ops, str(doc["output"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"malformed model architecture: {exc}") from exc


def _broadcast_architecture(party: Any, prog: Program | None, owner: int) -> Program:
    """Model owner sends the public architecture to all parties (as bytes, shared + revealed)."""
    blob = None
    if party.rank == owner:
        blob = torch.tensor(list(program_to_json(prog)), dtype=torch.float32)
        n = party.share(torch.tensor([float(len(blob))]), src=owner, shape=(1,))
    else:
        n = party.share(None, src=owner, shape=(1,))
    length = int(round(float(party.reveal(n)[0])))
    if not 0 < length <= MAX_ARCH_BYTES:
        raise ConfigurationError(f"architecture length {length} out of range")
    shared = party.share(blob, src=owner, shape=(length,))
    raw = party.reveal(shared).round().clamp(0, 255).to(torch.uint8)
    return program_from_json(bytes(raw.tolist()))


def mpc_forward(
    party: Any,
    model: Any,
    x: torch.Tensor | None,
    *,
    model_owner: int = 0,
    data_owner: int = 1,
    input_shape: Any = None,
    output: str = "logits",
) -> torch.Tensor | None:
    """Run one secret-shared inference inside an ``mpc.run`` job (every party calls this).

    ``model``: on the model owner an ``nn.Module`` (then ``input_shape`` is needed, or the
    shape of its own ``x``) or a converted :class:`Program`; on other parties ``None`` or the
    public architecture. ``x``: the input batch ``(n, *input_shape)`` on the data owner, ``None``
    elsewhere. Returns the logits (or labels, ``output="label"``) on the data owner and ``None``
    on every other party.
    """
    if output not in ("logits", "label"):
        raise ConfigurationError(f"output must be 'logits' or 'label', got {output!r}")
    _check_roles(model_owner, data_owner, party.world_size)
    local = None
    if party.rank == model_owner:
        local = _owner_program(model, input_shape, x)
    with party.phase("share architecture"):
        prog = _broadcast_architecture(party, local, model_owner)
    if party.rank != model_owner and isinstance(model, Program):
        if program_to_json(model.public()) != program_to_json(prog):
            raise ConfigurationError(
                "the architecture this party was given differs from the model owner's; "
                "obtain it with models.architecture(net, input_shape) from the model owner"
            )
    with party.phase("share weights"):
        params: dict[str, dict[str, Any]] = {}
        for op in prog.ops:
            params[op.name] = {}
            for pname in sorted(op.param_shapes):
                shape = op.param_shapes[pname]
                t = local.op(op.name).params[pname].float() if local is not None else None
                params[op.name][pname] = party.share(t, src=model_owner, shape=shape)
    with party.phase("share input"):
        if party.rank == data_owner:
            _check_input(x, prog)
            xs = party.share(x.float(), src=data_owner)
        else:
            xs = party.share(None, src=data_owner)
    with party.phase("evaluate model"):
        env: dict[str, Any] = {prog.input_name: xs}
        for op in prog.ops:
            env[op.name] = MPC_KERNELS[op.kind](party, op, params[op.name],
                                                *[env[i] for i in op.inputs])
        y = env[prog.output]
        if output == "label":
            y = y.reshape(y.size(0), -1).argmax(dim=1, one_hot=True)
    with party.phase("reveal output"):
        out = party.reveal(y, to=[data_owner])
    if party.rank != data_owner:
        return None
    return out.argmax(dim=1) if output == "label" else out


def _check_roles(model_owner: int, data_owner: int, world: int) -> None:
    for label, r in (("model_owner", model_owner), ("data_owner", data_owner)):
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < world:
            raise ConfigurationError(f"{label} must be a rank in 0..{world - 1}, got {r!r}")
    if model_owner == data_owner:
        raise ConfigurationError(
            f"model_owner and data_owner are both rank {model_owner}; with one owner there is "
            "nothing to hide, run the model in plaintext (or pick two different ranks)"
        )


def _owner_program(model: Any, input_shape: Any, x: torch.Tensor | None) -> Program:
    if isinstance(model, Program):
        if not model.has_params:
            raise ConfigurationError("the model owner must pass the model with its weights")
        return model
    from veil.models.convert import to_program

    if input_shape is None:
        if x is None:
            raise ConfigurationError("pass input_shape=... (per sample) on the model owner")
        input_shape = tuple(x.shape[1:])
    return to_program(model, input_shape, "mpc")


def _check_input(x: Any, prog: Program) -> None:
    if not isinstance(x, torch.Tensor):
        raise ConfigurationError(f"the data owner's x must be a torch.Tensor, got {type(x)}")
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(prog.input_shape):
        raise ConfigurationError(
            f"input of shape {tuple(x.shape)} does not fit the model: expected (n, "
            f"{', '.join(map(str, prog.input_shape))}); add a batch dimension or reshape"
        )
    if not torch.isfinite(x).all():
        raise ConfigurationError("the input contains NaN or infinite values; clean it first")


def _job(party: Any, model: Any, x: Any, model_owner: int, data_owner: int, output: str) -> Any:
    return mpc_forward(party, model, x, model_owner=model_owner, data_owner=data_owner,
                       output=output)


def mpc_inference(
    net: Any,
    x: torch.Tensor,
    *,
    model_owner: int = 0,
    data_owner: int = 1,
    parties: int = 2,
    output: str = "logits",
    timeout: float = 300.0,
    **run_kwargs: Any,
) -> torch.Tensor:
    """Secret-shared inference of ``net`` on ``x`` with ``parties`` local processes.

    A convenience that simulates the deployment on one machine: the model owner's process gets
    the weights, the data owner's process the input, the others neither. Returns what the data
    owner receives: logits ``(n, classes)`` (or labels with ``output="label"``). Extra keyword
    arguments go to :func:`veil.mpc.run` (``provider``, ``precision_bits``, ``device``...).
    """
    from veil import mpc
    from veil.models.convert import to_program

    if isinstance(parties, bool) or not isinstance(parties, int) or parties < 2:
        raise ConfigurationError(f"parties must be an int >= 2, got {parties!r}")
    _check_roles(model_owner, data_owner, parties)
    if output not in ("logits", "label"):
        raise ConfigurationError(f"output must be 'logits' or 'label', got {output!r}")
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ConfigurationError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    prog = to_program(net, tuple(x.shape[1:]), "mpc")  # fails here, before any process starts
    _check_input(x, prog)
    per_party = []
    for rank in range(parties):
        model = prog if rank == model_owner else None
        data = x.detach().float() if rank == data_owner else None
        per_party.append((model, data, model_owner, data_owner, output))
    mpc.preload("veil.models.mpc_infer")  # parties start with the converter loaded
    results = mpc.run(_job, parties=parties, per_party_args=per_party, timeout=timeout,
                      **run_kwargs)
    return results[data_owner]


# ---- kernels ---------------------------------------------------------------------------------


def _bview(v: Any, ndim: int) -> Any:
    return v.reshape(1, -1, *([1] * (ndim - 2)))


@mpc_kernel("linear")
def _linear(party: Any, op: Op, p: dict, x: Any) -> Any:
    y = x.matmul(p["weight"].transpose(0, 1))
    return y + p["bias"] if "bias" in p else y


@mpc_kernel("conv")
def _conv(party: Any, op: Op, p: dict, x: Any) -> Any:
    a = op.attrs
    fn = x.conv1d if a["dim"] == 1 else x.conv2d
    y = fn(p["weight"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
           groups=a["groups"])
    return y + _bview(p["bias"], len(op.shape) + 1) if "bias" in p else y


@mpc_kernel("scale_shift")
def _scale_shift(party: Any, op: Op, p: dict, x: Any) -> Any:
    nd = len(op.shape) + 1
    if nd == 2:
        return x * p["scale"] + p["shift"]
    return x * _bview(p["scale"], nd) + _bview(p["shift"], nd)


@mpc_kernel("relu")
def _relu(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.relu()


@mpc_kernel("sigmoid")
def _sigmoid(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.sigmoid()


@mpc_kernel("tanh")
def _tanh(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.tanh()


@mpc_kernel("gelu")
def _gelu(party: Any, op: Op, p: dict, x: Any) -> Any:
    # tanh form of GELU (|error| < 5e-4 vs the erf form); CrypTen's erf diverges for |x| > 2.5
    inner = (x + x * x * x * 0.044715) * 0.7978845608028654
    return x * (inner.tanh() + 1) * 0.5


@mpc_kernel("softmax")
def _softmax(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.softmax(op.attrs["dim"])


@mpc_kernel("poly")
def _poly(party: Any, op: Op, p: dict, x: Any) -> Any:
    c = op.attrs["coeffs"]
    acc = x * c[-1] + c[-2] if len(c) > 1 else x * 0 + c[0]
    for coef in reversed(c[:-2]):
        acc = acc * x + coef
    return acc


@mpc_kernel("maxpool2d")
def _maxpool(party: Any, op: Op, p: dict, x: Any) -> Any:
    a = op.attrs
    return x.max_pool2d(a["kernel_size"], padding=a["padding"], stride=a["stride"],
                        dilation=a["dilation"], ceil_mode=a["ceil_mode"])


@mpc_kernel("avgpool2d")
def _avgpool(party: Any, op: Op, p: dict, x: Any) -> Any:
    a = op.attrs
    y = x.avg_pool2d(a["kernel_size"], stride=a["stride"], padding=a["padding"])
    if a["count_include_pad"] or a["padding"] == (0, 0):
        return y
    # CrypTen divides by the full window; rescale by the (public) count of real pixels
    ones = torch.ones(1, 1, *x.shape[2:])
    frac = torch.nn.functional.avg_pool2d(ones, a["kernel_size"], a["stride"], a["padding"],
                                          count_include_pad=True)
    return y * (1.0 / frac)


@mpc_kernel("adaptive_avgpool2d")
def _adaptive(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.adaptive_avg_pool2d(op.attrs["output_size"])


@mpc_kernel("layernorm")
def _layernorm(party: Any, op: Op, p: dict, x: Any) -> Any:
    k = len(op.attrs["normalized_shape"])
    lead = tuple(x.shape[: x.dim() - k])
    flat = x.reshape(*lead, -1)
    mu = flat.mean(-1, keepdim=True)
    xc = flat - mu
    var = (xc * xc).mean(-1, keepdim=True)
    y = (xc * (var + op.attrs["eps"]).inv_sqrt()).reshape(*x.shape)
    if "weight" in p:
        y = y * p["weight"]
    if "bias" in p:
        y = y + p["bias"]
    return y


@mpc_kernel("reshape")
def _reshape(party: Any, op: Op, p: dict, x: Any) -> Any:
    return x.reshape(x.size(0), *op.shape)


@mpc_kernel("add")
def _add(party: Any, op: Op, p: dict, a: Any, b: Any) -> Any:
    return a + b


@mpc_kernel("cat")
def _cat(party: Any, op: Op, p: dict, *xs: Any) -> Any:
    from veil import mpc

    return mpc.cat(list(xs), dim=op.attrs["dim"])
