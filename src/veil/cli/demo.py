"""``veil demo``: a real end-to-end run of Veil's capabilities on this machine.

1. Joint sum and mean: N parties (separate processes) each hold a private vector; they
   secret-share it with CrypTen (through ``veil.mpc``) and reveal only the sum and the mean.
2. CKKS encrypted dot product: a client encrypts a vector, the server computes its dot product
   with a plaintext weight vector under encryption, the client decrypts.

Each result is printed beside the plaintext answer, its error and the time taken.
"""

from __future__ import annotations

import time
from typing import Any

import typer

MIN_PARTIES, MAX_PARTIES = 2, 8
DEMO_LENGTH = 1000


def _party_vector(rank: int, length: int = DEMO_LENGTH) -> Any:
    """Party ``rank``'s private demo data (deterministic so the plaintext answer can be shown)."""
    import numpy as np

    grid = np.linspace(0.0, 1.0, length)
    return (rank + 1) * 10.0 + np.sin(grid * (rank + 1) * 3.0) * 5.0


def _joint_sum_mean_job(party: Any) -> dict[str, Any]:
    """Runs once in every party's process: share, add, reveal the sum and the mean to all."""
    import torch

    mine = torch.tensor(_party_vector(party.rank), dtype=torch.float64)
    shares = [party.share(mine if r == party.rank else None, src=r, shape=mine.shape)
              for r in range(party.world_size)]
    total = shares[0]
    for s in shares[1:]:
        total = total + s
    mean = total.sum() / (mine.numel() * party.world_size)
    return {
        "sum": party.reveal(total).double().numpy(),
        "mean": float(party.reveal(mean)),
    }


def run_demo(parties: int, console: Any) -> dict[str, float]:
    """Run both demo parts; returns the max absolute errors (used by the tests)."""
    import numpy as np
    from rich.table import Table

    from veil import he, mpc

    table = Table(title=f"Veil demo ({parties} parties, vectors of {DEMO_LENGTH})")
    for col in ("computation", "veil result", "plaintext", "max |error|", "time"):
        table.add_column(col, justify="right" if col != "computation" else "left")

    data = [_party_vector(r) for r in range(parties)]
    plain_sum = np.sum(data, axis=0)
    plain_mean = float(np.mean(np.concatenate(data)))

    t0 = time.perf_counter()
    results = mpc.run(_joint_sum_mean_job, parties=parties)
    t_mpc = time.perf_counter() - t0
    got = results[0]
    err_sum = float(np.max(np.abs(got["sum"] - plain_sum)))
    err_mean = abs(got["mean"] - plain_mean)
    table.add_row(f"MPC joint sum ({parties} parties)", f"[{got['sum'][0]:.4f}, …]",
                  f"[{plain_sum[0]:.4f}, …]", f"{err_sum:.2e}", f"{t_mpc:.2f} s")
    table.add_row(f"MPC joint mean ({parties} parties)", f"{got['mean']:.6f}",
                  f"{plain_mean:.6f}", f"{err_mean:.2e}", "(same run)")

    x = np.linspace(-1.0, 1.0, DEMO_LENGTH)
    w = np.cos(np.arange(DEMO_LENGTH) / 7.0)
    t0 = time.perf_counter()
    ctx = he.CKKSContext.generate(he.CKKSParams.for_depth(1))
    enc_x = ctx.encrypt(x)                       # client
    public = he.CKKSContext.load(ctx.public().serialize())   # what the server receives
    enc_y = public.load_tensor(enc_x.serialize()).dot(w)     # server: no secret key
    y = float(ctx.decrypt(ctx.load_tensor(enc_y.serialize())))  # client
    t_ckks = time.perf_counter() - t0
    plain_dot = float(x @ w)
    err_dot = abs(y - plain_dot)
    table.add_row("CKKS encrypted dot product", f"{y:.6f}", f"{plain_dot:.6f}",
                  f"{err_dot:.2e}", f"{t_ckks:.2f} s")
    console.print(table)
    console.print("Tolerances: MPC fixed point (16 fractional bits) ≤ 1e-2 per element; "
                  "CKKS (scale 2^40) ≤ 1e-3.")
    return {"sum": err_sum, "mean": err_mean, "dot": err_dot}


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        parties: int = typer.Option(
            3, "--parties", "-p", min=MIN_PARTIES, max=MAX_PARTIES,
            help=f"number of MPC parties ({MIN_PARTIES}..{MAX_PARTIES}), each its own process",
        ),
    ) -> None:
        """Run Veil end to end: a joint sum/mean under MPC and a CKKS encrypted dot product."""
        from rich.console import Console

        run_demo(parties, Console())
