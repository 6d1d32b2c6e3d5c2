"""A small job for checking a session end to end (``veil party --job selftest``).

Each party secret-shares ``value`` (a float given with ``--arg value=...``) repeated ``length``
times; the parties compute the sum, the product and ``sum > threshold`` under MPC. The sum and the
comparison are revealed to every party, the product only to party 0.
"""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigurationError(f"--arg {name} must be a number, got {text!r}") from exc


def job(party: Any, value: str = "1", length: str = "4", threshold: str = "0") -> dict[str, Any]:
    import torch

    n = int(_number("length", length))
    if not 1 <= n <= 1_000_000:
        raise ConfigurationError(f"--arg length must be in 1..1000000, got {length!r}")
    mine = torch.full((n,), _number("value", value), dtype=torch.float64)
    shared = [party.share(mine if r == party.rank else None, src=r, shape=(n,))
              for r in range(party.world_size)]
    total, product = shared[0], shared[0]
    for s in shared[1:]:
        total = total + s
        product = product * s
    with party.phase("compare"):
        above = total > _number("threshold", threshold)
    return {
        "rank": party.rank,
        "sum": party.reveal(total),
        "above": party.reveal(above),
        "product": party.reveal(product, to=[0]),
    }
