"""A ``veil party`` job for the namespace tests: shares a known input, keeps its own share on
disk (so a test can look for its bytes on the wire), and opens twice the input to every party."""

from __future__ import annotations

from pathlib import Path

import torch

KNOWN_VALUE = 1234.5678
LENGTH = 4096


def known_input() -> torch.Tensor:
    return torch.full((LENGTH,), KNOWN_VALUE)


def job(party, out: str) -> dict:
    x = party.share(known_input() if party.rank == 0 else None, src=0, shape=(LENGTH,))
    z = x * 2.0
    share = z._tensor.share  # this party's arithmetic share of z (int64 ring elements)
    Path(out, f"share.{party.rank}").write_bytes(share.contiguous().numpy().tobytes())
    y = party.reveal(z)  # every party sends its share of z to the others
    return {"rank": party.rank, "ok": bool(torch.allclose(y, known_input() * 2, atol=1e-2))}
