"""Convert torch models into Veil's IR with a per-layer registry (``torch.fx``, never ONNX).

The model is traced with :mod:`torch.fx` (registered layer types are leaves, so their forward is
not traced into), its shapes are propagated with one all-zeros input, and each graph node is
looked up in three registries: module types (:func:`register_module`), functions
(:func:`register_function`) and tensor methods (:func:`register_method`). A converter returns
``(kind, attrs, params)``; the scheme tables below say which kinds the MPC and CKKS back ends run
and how to fix a model that uses one they do not.

After conversion BatchNorm (always evaluated with its running statistics, i.e. eval mode) is
folded into the preceding Linear/Conv when that layer feeds only the BatchNorm, and Dropout
disappears (identity at inference).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from veil.errors import ConfigurationError, UnsupportedLayerError
from veil.models.approx import PolyActivation
from veil.models.ir import Op, Program

__all__ = [
    "Issue",
    "SCHEMES",
    "register_module",
    "register_function",
    "register_method",
    "validate",
    "to_program",
]

Converter = Callable[..., tuple[str, dict[str, Any], dict[str, torch.Tensor]]]
_MODULES: dict[type, Converter] = {}
_FUNCTIONS: dict[Any, Converter] = {}
_METHODS: dict[str, Converter] = {}

_ELEMENTWISE = ("relu", "sigmoid", "tanh", "gelu", "poly")
_COMMON = {"linear", "conv", "scale_shift", "reshape", "add", "cat", "avgpool2d",
           "adaptive_avgpool2d", "poly"}
SCHEMES: dict[str, set[str]] = {
    "mpc": _COMMON | {"relu", "sigmoid", "tanh", "gelu", "softmax", "maxpool2d", "layernorm"},
    "ckks": set(_COMMON),
}
_FIT = "models.fix(net, {arg}='poly', domain=(a, b)) replaces it with a polynomial (stated error)"
_FIXES: dict[tuple[str, str], str] = {
    ("ckks", "relu"): _FIT.format(arg="relu"),
    ("ckks", "sigmoid"): _FIT.format(arg="sigmoid"),
    ("ckks", "tanh"): _FIT.format(arg="tanh"),
    ("ckks", "gelu"): _FIT.format(arg="gelu"),
    ("ckks", "maxpool2d"): "models.fix(net) replaces MaxPool2d with AvgPool2d (retrain or "
    "fine-tune for best accuracy)",
    ("ckks", "softmax"): "drop the final Softmax (argmax is unchanged) or let models.fix(net) "
    "remove it and apply softmax to the decrypted logits",
    ("ckks", "layernorm"): "LayerNorm needs 1/sqrt of an encrypted variance; use BatchNorm "
    "(folded into the previous layer) or run the model under scheme='mpc'",
}


@dataclass(frozen=True)
class Issue:
    """An unsupported layer: where it is, what it is, why, and how to fix it."""

    position: int
    name: str
    layer: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"#{self.position} {self.name} ({self.layer}): {self.reason}; fix: {self.fix}"


class _Unsupported(Exception):
    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def _register(table: dict, keys: tuple) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for k in keys:
            table[k] = fn
        return fn

    return deco


def register_module(*types: type) -> Callable[[Converter], Converter]:
    """Decorator: ``fn(module, node, in_shapes, out_shape) -> (kind, attrs, params)``."""
    return _register(_MODULES, types)


def register_function(*fns: Any) -> Callable[[Converter], Converter]:
    """Decorator: ``fn(node, in_shapes, out_shape) -> (kind, attrs, params)`` for call_function."""
    return _register(_FUNCTIONS, fns)


def register_method(*names: str) -> Callable[[Converter], Converter]:
    """Decorator: like :func:`register_function`, for tensor methods (``x.view(...)``)."""
    return _register(_METHODS, names)



def _params(**kw: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().to(torch.float64) for k, v in kw.items() if v is not None}


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


@register_module(nn.Linear)
def _linear(m: nn.Linear, node: Any, ins: list, out: Any) -> tuple:
    return "linear", {}, _params(weight=m.weight, bias=m.bias)


@register_module(nn.Conv1d, nn.Conv2d)
def _conv(m: nn.Conv1d | nn.Conv2d, node: Any, ins: list, out: Any) -> tuple:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        if m.padding_mode != "zeros" or m.padding != "valid":
            raise _Unsupported(
                f"padding={m.padding!r}, padding_mode={m.padding_mode!r}",
                "use integer zero padding, e.g. padding=1",
            )
    dim = 1 if isinstance(m, nn.Conv1d) else 2
    pad = (0,) * dim if m.padding == "valid" else tuple(m.padding)
    attrs = {"dim": dim, "stride": m.stride, "padding": pad, "dilation": m.dilation,
             "groups": m.groups}
    return "conv", attrs, _params(weight=m.weight, bias=m.bias)


@register_module(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(m: nn.modules.batchnorm._BatchNorm, node: Any, ins: list, out: Any) -> tuple:
    if m.running_mean is None or m.running_var is None:
        raise _Unsupported("BatchNorm without running statistics", "use track_running_stats=True")
    scale = 1.0 / torch.sqrt(m.running_var.double() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.double()
    shift = -m.running_mean.double() * scale
    if m.bias is not None:
        shift = shift + m.bias.double()
    return "scale_shift", {}, _params(scale=scale, shift=shift)


def _simple(kind: str) -> Converter:
    def conv(*args: Any) -> tuple:
        return kind, {}, {}

    return conv


register_module(nn.ReLU)(_simple("relu"))
register_module(nn.Sigmoid)(_simple("sigmoid"))
register_module(nn.Tanh)(_simple("tanh"))
register_function(F.relu, torch.relu)(_simple("relu"))
register_function(torch.sigmoid, F.sigmoid)(_simple("sigmoid"))
register_function(torch.tanh, F.tanh)(_simple("tanh"))
register_method("relu")(_simple("relu"))
register_method("sigmoid")(_simple("sigmoid"))
register_method("tanh")(_simple("tanh"))


@register_module(nn.GELU)
def _gelu(m: nn.GELU, node: Any, ins: list, out: Any) -> tuple:
    return "gelu", {"approximate": m.approximate}, {}


@register_function(F.gelu)
def _gelu_fn(node: Any, ins: list, out: Any) -> tuple:
    return "gelu", {"approximate": node.kwargs.get("approximate", "none")}, {}


def _softmax_dim(dim: Any, ndim: int) -> dict[str, Any]:
    if dim is None:
        raise _Unsupported("softmax without dim", "pass dim=-1 (the class dimension)")
    if dim == 0 or (ndim > 1 and dim % ndim == 0):
        raise _Unsupported("softmax over the batch dimension", "use dim=-1")
    return {"dim": dim}


@register_module(nn.Softmax)
def _softmax(m: nn.Softmax, node: Any, ins: list, out: Any) -> tuple:
    return "softmax", _softmax_dim(m.dim, _ndim(out)), {}


@register_function(F.softmax, torch.softmax)
def _softmax_fn(node: Any, ins: list, out: Any) -> tuple:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return "softmax", _softmax_dim(dim, _ndim(out)), {}


@register_module(PolyActivation)
def _poly(m: PolyActivation, node: Any, ins: list, out: Any) -> tuple:
    return "poly", {"coeffs": tuple(float(c) for c in m.coeffs)}, {}


@register_module(nn.MaxPool2d)
def _maxpool(m: nn.MaxPool2d, node: Any, ins: list, out: Any) -> tuple:
    if m.return_indices:
        raise _Unsupported("MaxPool2d(return_indices=True)", "use return_indices=False")
    attrs = {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
             "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": m.ceil_mode}
    return "maxpool2d", attrs, {}


@register_module(nn.AvgPool2d)
def _avgpool(m: nn.AvgPool2d, node: Any, ins: list, out: Any) -> tuple:
    if m.divisor_override is not None:
        raise _Unsupported("AvgPool2d(divisor_override=...)", "leave divisor_override=None")
    attrs = {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
             "padding": _pair(m.padding), "ceil_mode": m.ceil_mode,
             "count_include_pad": m.count_include_pad}
    return "avgpool2d", attrs, {}


@register_module(nn.AdaptiveAvgPool2d)
def _adaptive(m: nn.AdaptiveAvgPool2d, node: Any, ins: list, out: Any) -> tuple:
    size = m.output_size if out is None else tuple(out[-2:])
    return "adaptive_avgpool2d", {"output_size": size}, {}


@register_module(nn.LayerNorm)
def _layernorm(m: nn.LayerNorm, node: Any, ins: list, out: Any) -> tuple:
    attrs = {"normalized_shape": tuple(m.normalized_shape), "eps": float(m.eps)}
    return "layernorm", attrs, _params(weight=m.weight, bias=getattr(m, "bias", None))


def _reshape(*args: Any) -> tuple:
    return "reshape", {}, {}


register_module(nn.Flatten, nn.Unflatten)(_reshape)
register_function(torch.flatten, torch.reshape)(_reshape)
register_method("view", "reshape", "flatten")(_reshape)


@register_module(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
def _identity(*args: Any) -> tuple:
    return "identity", {}, {}


@register_function(operator.add, torch.add)
def _add(node: Any, ins: list, out: Any) -> tuple:
    if len(ins) != 2 or node.kwargs.get("alpha", 1) != 1:
        raise _Unsupported("addition of a tensor and a constant", "fold constants into a bias")
    if None not in ins and ins[0] != ins[1]:
        raise _Unsupported(f"broadcasting addition of shapes {ins[0]} and {ins[1]}",
                           "add tensors of the same shape")
    return "add", {}, {}


@register_function(torch.cat)
def _cat(node: Any, ins: list, out: Any) -> tuple:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    ndim = _ndim(out)
    if dim == 0 or (ndim > 1 and dim % ndim == 0):
        raise _Unsupported("concatenation along the batch dimension", "concatenate along dim=1")
    return "cat", {"dim": dim if dim > 0 else dim + ndim}, {}


def _ndim(out: tuple[int, ...] | None) -> int:
    """Number of dims including batch (0 when shapes were not propagated)."""
    return 0 if out is None else len(out)


_SHAPE_QUERIES = {"size", "dim", operator.getitem, getattr}


class Tracer(torch.fx.Tracer):
    """torch.fx tracer keeping Veil's registered layers as leaves (shared with ``ckks.fix``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in _MODULES or super().is_leaf_module(m, qualname)


def _trace(net: nn.Module) -> torch.fx.GraphModule:
    if not isinstance(net, nn.Module):
        raise ConfigurationError(f"expected a torch.nn.Module, got {type(net).__name__}")
    net = copy.deepcopy(net).eval()
    try:
        graph = Tracer().trace(net)
    except Exception as exc:  # fx raises many types for untraceable code
        raise UnsupportedLayerError(
            f"{type(net).__name__} could not be traced by torch.fx ({type(exc).__name__}: {exc}); "
            "fix: remove data-dependent control flow from forward(), or build the model from "
            "nn.Sequential and supported layers"
        ) from exc
    return torch.fx.GraphModule(net, graph)


def _flatten_args(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten_args(a))
        else:
            out.append(a)
    return out


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return None if meta is None or not hasattr(meta, "shape") else tuple(meta.shape)


def _walk(net: nn.Module, input_shape: tuple[int, ...] | None, scheme: str | None):
    """Yield ``Op`` or ``Issue`` for each node, in graph order."""
    gm = _trace(net)
    if input_shape is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
        except Exception as exc:
            raise ConfigurationError(
                f"running {type(net).__name__} on an input of shape (1, {input_shape}) failed "
                f"({type(exc.__cause__ or exc).__name__}: "
                f"{str(exc.__cause__ or exc).splitlines()[0][:200]}); pass the per-sample "
                "input_shape without the batch dimension, e.g. input_shape=(64,) or (1, 8, 8)"
            ) from exc
    modules = dict(gm.named_modules())
    alias: dict[str, str] = {}
    position = 0
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        out = _shape(node)
        if node.op == "call_module":
            target: Any = modules[node.target]
            table, key, label = _MODULES, type(target), type(target).__name__
            name = str(node.target)
        elif node.op == "call_function":
            table, key, label = _FUNCTIONS, node.target, getattr(node.target, "__name__", "?")
            target, name = None, node.name
        else:
            table, key, label, target, name = _METHODS, node.target, f".{node.target}()", None, \
                node.name
        tensor_ins = [a for a in _flatten_args(node.args) if isinstance(a, torch.fx.Node)
                      and (input_shape is None or _shape(a) is not None)]
        if (input_shape is not None and out is None) or node.target in _SHAPE_QUERIES:
            continue  # a non-tensor value (x.size(0) and the like), consumed by reshapes
        position += 1
        conv = table.get(key)
        if conv is None:
            yield Issue(position, name, label, "no Veil converter for this layer",
                        f"replace it with a supported layer ({_supported_hint(scheme)}) or "
                        "register a converter with veil.models.convert.register_module")
            continue
        in_shapes = [_shape(a) for a in tensor_ins]
        try:
            args = (target, node, in_shapes, out) if target is not None else (node, in_shapes, out)
            kind, attrs, params = conv(*args)
        except _Unsupported as exc:
            yield Issue(position, name, label, f"unsupported configuration: {exc.reason}", exc.fix)
            continue
        inputs = tuple(alias.get(a.name, a.name) for a in tensor_ins[:2 if kind == "add" else None])
        if kind == "reshape":
            inputs = inputs[:1]
        if kind == "identity":
            alias[node.name] = inputs[0]
            continue
        if scheme is not None and kind not in SCHEMES[scheme]:
            yield Issue(position, name, label, f"{kind} is not supported under {scheme.upper()}",
                        _FIXES.get((scheme, kind), "run it under the other scheme"))
            continue
        shape = tuple(out[1:]) if out is not None else ()
        yield Op(node.name, kind, inputs, shape, attrs, params, position=position,
                 source=f"{name} ({label})")


def _supported_hint(scheme: str | None) -> str:
    kinds = SCHEMES[scheme] if scheme else SCHEMES["mpc"] | SCHEMES["ckks"]
    return "supported kinds: " + ", ".join(sorted(kinds))


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigurationError(f"scheme must be 'mpc' or 'ckks', got {scheme!r}")


def validate(net: nn.Module, scheme: str = "mpc", input_shape: Any = None) -> list[Issue]:
    """List every layer of ``net`` that cannot run under ``scheme``, with position and fix.

    An empty list means the model converts. ``input_shape`` (per sample, no batch dimension) is
    optional; with it, shape-dependent checks run too.
    """
    _check_scheme(scheme)
    shape = None if input_shape is None else _as_shape(input_shape)
    try:
        return [r for r in _walk(net, shape, scheme) if isinstance(r, Issue)]
    except UnsupportedLayerError as exc:
        return [Issue(0, "<model>", type(net).__name__, str(exc), "see the message")]


def _as_shape(input_shape: Any) -> tuple[int, ...]:
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"input_shape must be a tuple of positive ints, got {input_shape!r}"
        ) from exc
    if not shape or any(s < 1 for s in shape):
        raise ConfigurationError(
            f"input_shape must be a non-empty tuple of positive ints (no batch dimension), got "
            f"{input_shape!r}"
        )
    return shape


def to_program(net: nn.Module, input_shape: Any, scheme: str = "mpc") -> Program:
    """Convert ``net`` (for per-sample ``input_shape``) into a :class:`Program` for ``scheme``.

    Raises :class:`UnsupportedLayerError` listing every unsupported layer with its position and
    fix (the same list :func:`validate` returns).
    """
    _check_scheme(scheme)
    shape = _as_shape(input_shape)
    ops: list[Op] = []
    issues: list[Issue] = []
    for r in _walk(net, shape, scheme):
        (issues if isinstance(r, Issue) else ops).append(r)
    if issues:
        raise UnsupportedLayerError(
            f"{type(net).__name__} has {len(issues)} layer(s) that cannot run under "
            f"{scheme.upper()}:\n  " + "\n  ".join(str(i) for i in issues)
        )
    gm_out = ops[-1].name if ops else None
    if gm_out is None:
        raise UnsupportedLayerError(f"{type(net).__name__} has no layers to convert")
    input_name = _input_name(net)
    prog = Program(input_name, shape, ops, gm_out)
    _fix_output(prog, net)
    return fold_batchnorm(prog)


def _input_name(net: nn.Module) -> str:
    gm = _trace(net)
    return next(n.name for n in gm.graph.nodes if n.op == "placeholder")


def _fix_output(prog: Program, net: nn.Module) -> None:
    gm = _trace(net)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    (res,) = out.args
    if not isinstance(res, torch.fx.Node):
        raise UnsupportedLayerError("the model must return a single tensor")
    name = res.name
    known = {op.name for op in prog.ops}
    # an output that is an identity (Dropout) aliases its input
    while name not in known and name != prog.input_name:
        node = next(n for n in gm.graph.nodes if n.name == name)
        name = node.args[0].name
    prog.output = name


def fold_batchnorm(prog: Program) -> Program:
    """Fold ``scale_shift`` (BatchNorm) into a preceding linear/conv that feeds only it."""
    ops = list(prog.ops)
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind == "scale_shift" and op.params is not None:
            prev = next((p for p in ops if p.name == op.inputs[0]), None)
            users = [u for u in ops if prev is not None and prev.name in u.inputs]
            if prev is not None and prev.kind in ("linear", "conv") and users == [op] \
                    and prog.output != prev.name:
                s, t = op.params["scale"], op.params["shift"]
                w = prev.params["weight"]
                b = prev.params.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
                new_params = {"weight": w * s.reshape(-1, *([1] * (w.ndim - 1))),
                              "bias": b * s + t}
                merged = Op(op.name, prev.kind, prev.inputs, op.shape, dict(prev.attrs),
                            new_params, position=prev.position,
                            source=f"{prev.source} + {op.source} (folded)")
                ops[ops.index(prev)] = merged
                ops.remove(op)
                continue
        i += 1
    return Program(prog.input_name, prog.input_shape, ops, prog.output)
