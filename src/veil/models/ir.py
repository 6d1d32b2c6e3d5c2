"""Veil's small model IR: a list of operations over named values, plus a plaintext interpreter.

:mod:`veil.models.convert` turns a torch model into a :class:`Program`; the MPC and CKKS back ends
interpret the same program. Each :class:`Op` has a ``kind`` (``"linear"``, ``"conv"``, ``"relu"``,
...), public ``attrs`` (strides, padding, polynomial coefficients: part of the architecture) and
private ``params`` (weights: known to the model owner only). :meth:`Program.public` drops the
params and keeps only their shapes: that is exactly what the other parties of an MPC inference
learn about the model (its architecture), and all they need to take part.

Shapes never include the batch dimension.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from veil.errors import ConfigurationError

__all__ = ["Op", "Program", "plain_kernel", "PLAIN_KERNELS"]


@dataclass
class Op:
    """One operation: ``name = kind(*inputs; attrs, params)`` with output ``shape``."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, torch.Tensor] | None = field(default_factory=dict)
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    position: int = -1
    source: str = ""

    def __post_init__(self) -> None:
        if self.params:
            self.param_shapes = {k: tuple(v.shape) for k, v in self.params.items()}

    def describe(self) -> str:
        return f"#{self.position} {self.source or self.name}"


@dataclass
class Program:
    """A converted model. ``ops`` are in execution order; ``output`` names the result value."""

    input_name: str
    input_shape: tuple[int, ...]
    ops: list[Op]
    output: str

    @property
    def has_params(self) -> bool:
        return all(op.params is not None for op in self.ops)

    def public(self) -> Program:
        """The architecture only: same ops and attrs, params removed (their shapes kept)."""
        ops = [
            dataclasses.replace(op, params=None, param_shapes=dict(op.param_shapes))
            for op in self.ops
        ]
        return Program(self.input_name, tuple(self.input_shape), ops, self.output)

    def op(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def consumers(self, name: str) -> list[Op]:
        return [op for op in self.ops if name in op.inputs]

    def run_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate in plaintext with torch: the oracle for the encrypted back ends."""
        if not self.has_params:
            raise ConfigurationError(
                "this program holds only the public architecture (no weights); convert the "
                "model itself to evaluate it in plaintext"
            )
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ConfigurationError(
                f"input of shape {tuple(x.shape)} does not match the model's input shape "
                f"(batch, {', '.join(map(str, self.input_shape))}); reshape the input"
            )
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for op in self.ops:
            env[op.name] = PLAIN_KERNELS[op.kind](op, *[env[i] for i in op.inputs])
        return env[self.output]


PLAIN_KERNELS: dict[str, Callable[..., torch.Tensor]] = {}


def plain_kernel(*kinds: str) -> Callable[[Callable], Callable]:
    """Decorator: register the plaintext torch implementation of op ``kinds``."""

    def deco(fn: Callable) -> Callable:
        for k in kinds:
            PLAIN_KERNELS[k] = fn
        return fn

    return deco


def channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector to broadcast over (batch, C, *spatial) with ``ndim`` dims."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


@plain_kernel("linear")
def _linear(op: Op, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, op.params["weight"], op.params.get("bias"))


@plain_kernel("conv")
def _conv(op: Op, x: torch.Tensor) -> torch.Tensor:
    fn = F.conv1d if op.attrs["dim"] == 1 else F.conv2d
    a = op.attrs
    return fn(x, op.params["weight"], op.params.get("bias"), a["stride"], a["padding"],
              a["dilation"], a["groups"])


@plain_kernel("scale_shift")
def _scale_shift(op: Op, x: torch.Tensor) -> torch.Tensor:
    s, t = op.params["scale"], op.params["shift"]
    if x.ndim == 2:
        return x * s + t
    return x * channel_view(s, x.ndim) + channel_view(t, x.ndim)


@plain_kernel("relu")
def _relu(op: Op, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


@plain_kernel("sigmoid")
def _sigmoid(op: Op, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


@plain_kernel("tanh")
def _tanh(op: Op, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@plain_kernel("gelu")
def _gelu(op: Op, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=op.attrs.get("approximate", "none"))


@plain_kernel("softmax")
def _softmax(op: Op, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=op.attrs["dim"])


@plain_kernel("poly")
def _poly(op: Op, x: torch.Tensor) -> torch.Tensor:
    coeffs = op.attrs["coeffs"]
    acc = torch.zeros_like(x) + coeffs[-1]
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


@plain_kernel("maxpool2d")
def _maxpool(op: Op, x: torch.Tensor) -> torch.Tensor:
    a = op.attrs
    return F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                        a["ceil_mode"])


@plain_kernel("avgpool2d")
def _avgpool(op: Op, x: torch.Tensor) -> torch.Tensor:
    a = op.attrs
    return F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                        a["count_include_pad"])


@plain_kernel("adaptive_avgpool2d")
def _adaptive_avgpool(op: Op, x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, op.attrs["output_size"])


@plain_kernel("layernorm")
def _layernorm(op: Op, x: torch.Tensor) -> torch.Tensor:
    p = op.params
    return F.layer_norm(x, op.attrs["normalized_shape"], p.get("weight"), p.get("bias"),
                        op.attrs["eps"])


@plain_kernel("reshape")
def _reshape(op: Op, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], *op.shape)


@plain_kernel("add")
def _add(op: Op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


@plain_kernel("cat")
def _cat(op: Op, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=op.attrs["dim"])
