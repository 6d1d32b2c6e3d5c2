"""Polynomial approximations of activation functions, each with its domain and max error.

CKKS evaluates only additions and multiplications, so every non-polynomial activation of a model
must become a polynomial before it can run on encrypted data. An approximation here is a
least-squares fit in the Chebyshev basis on Chebyshev nodes of a stated domain ``(a, b)``; the fit
is converted to power-basis coefficients (what CKKS ``polyval`` evaluates).

Every :class:`PolyApprox` carries ``max_error``: an upper bound on ``|p(x) - f(x)|`` for all ``x``
in the domain. It is computed on a dense grid of ``GRID`` points and then widened by the largest
change the error can make between two grid points, ``(L_f + L_p) * h / 2`` with ``h`` the grid
step, ``L_f`` a Lipschitz constant of ``f`` and ``L_p`` the largest ``|p'|`` on the grid plus its
own curvature slack; so the bound also holds between grid points. Outside the domain there is no
guarantee at all: polynomials diverge quickly, so inputs must be scaled into the domain (choose
the domain from the activation ranges seen on training data).

Approximations are registered by name with :func:`register_function`; ``approximate("relu",
(-6, 6), degree=4)`` fits one, :class:`PolyActivation` is the torch module that evaluates it in
plaintext (so HE-friendly models can be trained with exactly the polynomial CKKS evaluates).
This module imports numpy and torch; ``veil.models`` loads it lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from veil.errors import ConfigurationError

__all__ = [
    "PolyApprox",
    "PolyActivation",
    "approximate",
    "register_function",
    "functions",
    "GRID",
]

GRID = 100_001

# name -> (numpy function, Lipschitz constant of the function)
_FUNCTIONS: dict[str, tuple[Callable[[Any], Any], float]] = {}


def register_function(name: str, *, lipschitz: float) -> Callable[[Callable], Callable]:
    """Decorator: register a numpy activation ``f(x)`` under ``name`` for :func:`approximate`.

    ``lipschitz`` must bound ``|f'|`` everywhere; it is used in the error bound.
    """

    def deco(fn: Callable) -> Callable:
        _FUNCTIONS[name] = (fn, float(lipschitz))
        return fn

    return deco


def functions() -> list[str]:
    """Names of the activations that can be approximated."""
    return sorted(_FUNCTIONS)


@register_function("relu", lipschitz=1.0)
def _relu(x: Any) -> Any:
    return np.maximum(x, 0.0)


@register_function("sigmoid", lipschitz=0.25)
def _sigmoid(x: Any) -> Any:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@register_function("tanh", lipschitz=1.0)
def _tanh(x: Any) -> Any:
    return np.tanh(x)


@register_function("gelu", lipschitz=1.13)
def _gelu(x: Any) -> Any:
    from scipy.special import erf  # scipy ships with scikit-learn

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


@dataclass(frozen=True)
class PolyApprox:
    """A polynomial standing in for ``function`` on ``domain``.

    ``coeffs`` are power-basis coefficients, lowest degree first (``coeffs[i]`` multiplies
    ``x**i``). ``max_error`` bounds ``|p(x) - f(x)|`` for ``x`` in ``domain`` (see module doc);
    nothing is promised outside the domain.
    """

    function: str
    domain: tuple[float, float]
    coeffs: tuple[float, ...]
    max_error: float

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    def __call__(self, x: Any) -> Any:
        """Evaluate the polynomial (Horner) on a float, numpy array or torch tensor."""
        acc = x * 0 + self.coeffs[-1]
        for c in reversed(self.coeffs[:-1]):
            acc = acc * x + c
        return acc

    def describe(self) -> str:
        a, b = self.domain
        return (
            f"{self.function} ~ degree-{self.degree} polynomial on [{a:g}, {b:g}], "
            f"max error {self.max_error:.3g}"
        )


def check_domain(domain: Any, what: str = "domain") -> tuple[float, float]:
    """``(low, high)`` as floats, with finite ``low < high``; a typed error otherwise."""
    try:
        a, b = (float(v) for v in domain)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{what} must be a pair (low, high) of numbers, got {domain!r:.80}; e.g. (-6, 6)"
        ) from exc
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise ConfigurationError(f"{what} must have finite low < high, got ({a!r}, {b!r})")
    return a, b


def error_bound(fn_name: str, coeffs: tuple[float, ...], domain: tuple[float, float]) -> float:
    """Upper bound on ``max |p - f|`` over ``domain`` (grid maximum plus between-point slack)."""
    f, lip_f = _FUNCTIONS[fn_name]
    a, b = domain
    xs = np.linspace(a, b, GRID)
    h = (b - a) / (GRID - 1)
    p = np.polynomial.Polynomial(coeffs)
    err = float(np.max(np.abs(p(xs) - f(xs))))
    dp = p.deriv()
    lip_p = float(np.max(np.abs(dp(xs))))
    # |p'| can grow between grid points by at most max|p''| * h / 2
    if p.degree() >= 2:
        lip_p += float(np.max(np.abs(dp.deriv()(xs)))) * h / 2
    return err + (lip_f + lip_p) * h / 2


def approximate(function: str, domain: Any, degree: int) -> PolyApprox:
    """Fit ``function`` (a registered name: relu, sigmoid, tanh, gelu) on ``domain``.

    Least squares in the Chebyshev basis on ``8 * (degree + 1)`` Chebyshev nodes, which keeps
    the fit close to the minimax polynomial and well conditioned. Returns the power-basis
    polynomial with a checked ``max_error`` over the domain.
    """
    if function not in _FUNCTIONS:
        raise ConfigurationError(
            f"no polynomial approximation for {function!r}; known: {', '.join(functions())} "
            "(register more with veil.models.approx.register_function)"
        )
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= 31:
        raise ConfigurationError(
            f"degree must be an integer in 1..31, got {degree!r}; 2-8 is typical for CKKS"
        )
    a, b = check_domain(domain)
    f, _ = _FUNCTIONS[function]
    k = np.arange(8 * (degree + 1))
    t = np.cos(np.pi * (k + 0.5) / len(k))  # Chebyshev nodes on [-1, 1]
    xs = 0.5 * (b - a) * t + 0.5 * (b + a)
    cheb = np.polynomial.Chebyshev.fit(xs, f(xs), degree, domain=[a, b])
    coeffs = tuple(float(c) for c in cheb.convert(kind=np.polynomial.Polynomial).coef)
    coeffs = coeffs + (0.0,) * (degree + 1 - len(coeffs))
    return PolyApprox(function, (a, b), coeffs, error_bound(function, coeffs, (a, b)))


class PolyActivation(torch.nn.Module):
    """Elementwise polynomial activation (a plaintext torch module).

    ``coeffs`` are power-basis coefficients, lowest degree first. ``approx`` (if given) records
    which function it stands in for, its domain and max error. The coefficients are a buffer (not
    trained), so what is trained in plaintext is exactly what CKKS evaluates.
    """

    def __init__(self, coeffs: Any, *, approx: PolyApprox | None = None) -> None:
        super().__init__()
        try:
            c = torch.as_tensor([float(v) for v in coeffs], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"coeffs must be a list of numbers (lowest degree first), got {coeffs!r}"
            ) from exc
        if c.numel() < 1 or not torch.isfinite(c).all():
            raise ConfigurationError(
                f"coeffs must be a non-empty list of finite numbers, got {coeffs!r}"
            )
        self.register_buffer("coeffs", c)
        self.approx = approx

    @classmethod
    def from_approx(cls, approx: PolyApprox) -> PolyActivation:
        return cls(approx.coeffs, approx=approx)

    @property
    def degree(self) -> int:
        return int(self.coeffs.numel()) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.coeffs.to(x.dtype)
        acc = torch.zeros_like(x) + c[-1]
        for i in range(c.numel() - 2, -1, -1):
            acc = acc * x + c[i]
        return acc

    def extra_repr(self) -> str:
        if self.approx is not None:
            return self.approx.describe()
        return "coeffs=(" + ", ".join(f"{float(c):.4g}" for c in self.coeffs) + ")"
