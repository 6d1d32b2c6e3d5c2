"""The data and model of the federated-averaging recipe (:func:`veil.fl.train_fedavg`):
scikit-learn's digits (8x8 images, 10 classes, shipped with sklearn: no download) split into
client shards and a held-out test set, and a small MLP initialised from a local generator
(torch's global generator is never seeded).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["make_model", "load_digits_split", "accuracy"]


def make_model(hidden: int, seed: int) -> Any:
    """64 -> hidden -> 10 MLP initialised from a local generator seeded with ``seed``."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
    return model


def load_digits_split(num_clients: int, seed: int) -> tuple[list[tuple[Any, Any]], Any, Any]:
    """Client shards and a held-out test set of sklearn's digits (scaled to [0, 1])."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    shards = [(x[idx], y[idx]) for idx in train.tensor_split(num_clients)]
    return shards, x[test], y[test]


def accuracy(model: Any, x: Any, y: Any) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
