"""``veil demo``: a real end-to-end run of Veil's capabilities on this machine.

1. Joint sum and mean: N parties (separate processes) each hold a private vector; they
   secret-share it with CrypTen (through ``veil.mpc``) and reveal only the sum and the mean.
2. CKKS encrypted dot product: a client encrypts a vector, the server computes its dot product
   with a plaintext weight vector under encryption, the client decrypts.
3. Joint statistics across N hospitals (``veil.stats``, backend="mpc"): mean, stdev and a
   correlation over rows that never leave their hospital's process.
4. Encrypted inference: a digits classifier from the zoo evaluated under CKKS by a server that
   holds only the public context.

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
    ctx = he.CKKSContext.generate(he.CKKSParams.for_depth(1), galois_keys=True)  # dot rotates
    enc_x = ctx.encrypt(x)                       # client
    public = he.CKKSContext.load(ctx.public().serialize())   # what the server receives
    enc_y = public.load_tensor(enc_x.serialize()).dot(w)     # server: no secret key
    y = float(ctx.decrypt(ctx.load_tensor(enc_y.serialize())))  # client
    t_ckks = time.perf_counter() - t0
    plain_dot = float(x @ w)
    err_dot = abs(y - plain_dot)
    table.add_row("CKKS encrypted dot product", f"{y:.6f}", f"{plain_dot:.6f}",
                  f"{err_dot:.2e}", f"{t_ckks:.2f} s")
    err_hosp = _hospitals(table, parties)
    err_pred = _encrypted_prediction(table)
    console.print(table)
    console.print("Tolerances: MPC fixed point (16 fractional bits) ≤ 1e-2 per element; "
                  "CKKS (scale 2^40) ≤ 1e-3.")
    return {"sum": err_sum, "mean": err_mean, "dot": err_dot, "hospitals": err_hosp,
            "prediction": err_pred}


def _hospitals(table: Any, parties: int) -> float:
    """Joint statistics: each hospital's rows stay in its own process (backend="mpc")."""
    import numpy as np

    from veil import stats

    grid = np.linspace(0.0, 1.0, 120)
    sites = [np.column_stack([40 + 20 * np.sin(grid * (r + 2) * 5) + 5 * r,
                              24 + 4 * np.cos(grid * (r + 3) * 7)]) for r in range(parties)]
    pooled = np.concatenate(sites)
    t0 = time.perf_counter()
    res = stats.joint(sites, ["mean", "stdev", "correlation"], backend="mpc",
                      columns=["age", "bmi"])
    took = time.perf_counter() - t0
    plain = (pooled.mean(axis=0), pooled.std(axis=0, ddof=1), np.corrcoef(pooled.T)[0, 1])
    got = (np.asarray(res["mean"]), np.asarray(res["stdev"]),
           float(np.asarray(res["correlation"])[0][1]))
    errors = [float(np.max(np.abs(g - p))) for g, p in zip(got, plain)]
    for label, g, p, e in zip(("mean age", "stdev age", "corr(age, bmi)"),
                              (got[0][0], got[1][0], got[2]), (plain[0][0], plain[1][0], plain[2]),
                              errors):
        table.add_row(f"{parties} hospitals: {label}", f"{g:.4f}", f"{p:.4f}", f"{e:.1e}",
                      f"{took:.2f} s" if label == "mean age" else "(same run)")
    return max(errors)


def _encrypted_prediction(table: Any) -> float:
    """CKKS inference: the server runs a digits classifier on ciphertexts it cannot read."""
    import numpy as np
    import torch

    from veil import he, models
    from veil.models import zoo

    net, x_test, _ = zoo.load("digits-logreg")
    x = np.asarray(x_test[:8], dtype=np.float64)
    t0 = time.perf_counter()
    plan = models.plan(net, input_shape=(64,))
    ctx = he.CKKSContext.generate(plan.params)                          # client
    server = models.compile(net, he.CKKSContext.load(ctx.public().serialize()),
                            plan)                                       # server: public only
    logits = models.decrypt_output(ctx, server(models.encrypt_input(ctx, x, plan)))
    took = time.perf_counter() - t0
    with torch.no_grad():
        plain = net(torch.as_tensor(x, dtype=torch.float32)).numpy()
    table.add_row("CKKS encrypted digit prediction (8 images)",
                  " ".join(str(int(v)) for v in logits.argmax(1)),
                  " ".join(str(int(v)) for v in plain.argmax(1)),
                  f"{float(np.abs(logits - plain).max()):.1e}", f"{took:.2f} s")
    return float(np.abs(logits - plain).max())


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        parties: int = typer.Option(
            3, "--parties", "-p", min=MIN_PARTIES, max=MAX_PARTIES,
            help=f"number of MPC parties ({MIN_PARTIES}..{MAX_PARTIES}), each its own process",
        ),
    ) -> None:
        """Run Veil end to end: MPC sum/mean, CKKS dot product, joint statistics, encrypted
        inference."""
        from rich.console import Console

        run_demo(parties, Console())
