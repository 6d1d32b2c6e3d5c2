"""The jobs `veil bench` runs under every scheme, with their plaintext answers.

Each job has two roles: a *data owner* holding ``x`` (and ``y`` for the two-input jobs) and a
*second party* holding plaintext weights ``w`` / ``W``. Under HE the data owner encrypts and the
second party computes on ciphertexts; under MPC both inputs are secret-shared.

| op      | inputs                          | result                       |
|---------|---------------------------------|------------------------------|
| add     | x, y (length n)                 | x + y                        |
| mul     | x, y (length n)                 | x * y (Paillier: x * plain y)|
| sum     | x                               | Σ x                          |
| mean    | x                               | Σ x / n                      |
| dot     | x, w                            | x · w                        |
| vecmat  | x (n), W (n × 10)               | x W                          |
| logreg  | X (n samples × 64), W (10 × 64) | X Wᵀ + b (digits logits)     |

Benchmark inputs are public synthetic data, drawn from a seeded numpy Generator so every scheme
sees the same numbers; nothing here is key material.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OPS = ("add", "mul", "sum", "mean", "dot", "vecmat", "logreg")
INTEGER_OPS = ("add", "mul", "sum", "dot")
VECMAT_OUT = 10
LOGREG_FEATURES = 64


@dataclass(frozen=True)
class Workload:
    op: str
    size: int
    integer: bool
    x: np.ndarray
    y: np.ndarray | None = None
    w: np.ndarray | None = None
    W: np.ndarray | None = None
    b: np.ndarray | None = None

    def plain(self) -> np.ndarray:
        """The plaintext answer, the oracle every scheme is compared against."""
        x, y = self.x, self.y
        if self.op == "add":
            return x + y
        if self.op == "mul":
            return x * y
        if self.op == "sum":
            return np.asarray(x.sum())
        if self.op == "mean":
            return np.asarray(x.mean())
        if self.op == "dot":
            return np.asarray(x @ self.w)
        if self.op == "vecmat":
            return x @ self.W
        if self.op == "logreg":
            return x @ self.W.T + self.b
        raise ValueError(self.op)


def make(op: str, size: int, *, integer: bool = False, seed: int = 0) -> Workload:
    """Synthetic inputs for ``op`` at ``size`` (integers in [-64, 64] when ``integer``)."""
    rng = np.random.default_rng([seed, size, OPS.index(op)])

    def draw(*shape: int) -> np.ndarray:
        if integer:
            return rng.integers(-64, 65, size=shape).astype(np.int64)
        return rng.uniform(-1.0, 1.0, size=shape)

    if op in ("add", "mul"):
        return Workload(op, size, integer, draw(size), y=draw(size))
    if op in ("sum", "mean"):
        return Workload(op, size, integer, draw(size))
    if op == "dot":
        return Workload(op, size, integer, draw(size), w=draw(size))
    if op == "vecmat":
        return Workload(op, size, integer, draw(size), W=draw(size, VECMAT_OUT) / np.sqrt(size))
    if op == "logreg":
        return Workload(op, size, integer, _digits_rows(size, rng), W=_logreg_weights(),
                        b=np.linspace(-0.5, 0.5, VECMAT_OUT))
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


def _digits_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of sklearn's digits (scaled to [0, 1]), repeated as needed."""
    from sklearn.datasets import load_digits

    data = load_digits().data / 16.0
    idx = rng.integers(0, len(data), size=n)
    return data[idx]


def _logreg_weights() -> np.ndarray:
    grid = np.arange(VECMAT_OUT * LOGREG_FEATURES, dtype=np.float64)
    return (np.sin(grid * 0.37) * 0.5).reshape(VECMAT_OUT, LOGREG_FEATURES)


def max_error(got: Any, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(want))
    return float(np.max(np.abs(got - want))) if want.size else 0.0
