"""`veil bench peers`: Veil against the libraries a user would otherwise use, in one run.

Each comparison runs the same task with Veil and with the raw peer on this machine and reports
the ratio ``peer time / Veil time`` (> 1: Veil is faster; for thin wrappers the goal is ≈ 1, i.e.
low overhead). Peers: raw TenSEAL (CKKS), phe + gmpy2 (Paillier), raw CrypTen (same dealer
provider, crypten's own launcher) and MPyC (3 local parties, ``-M3``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.bench.environment import environment

Progress = Callable[[str], None]
PHE_MAX = 100           # phe encrypts ~100 values/s here; keep its share of the run short
MPC_PEER_TIMEOUT = 300


@dataclass
class PeerRow:
    """One comparison: the same task timed with Veil and with the peer library."""

    task: str
    peer: str
    size: int
    veil_s: float
    peer_s: float
    note: str = ""

    @property
    def ratio(self) -> float:
        """Peer time / Veil time (> 1: Veil is faster)."""
        return self.peer_s / self.veil_s if self.veil_s > 0 else float("nan")


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` timed calls, after one untimed warm-up call when repeating."""
    if repeats > 1:
        fn()  # first calls pay one-off costs (key caches, allocations) on both sides
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _data(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


# --- CKKS: Veil vs raw TenSEAL -----------------------------------------------------------------
def _ckks(n: int, repeats: int) -> list[PeerRow]:
    from veil import he
    from veil.he.lattice.native import import_tenseal

    ts = import_tenseal()
    params = he.CKKSParams.default()
    ctx = he.CKKSContext.generate(params, galois_keys=True)  # dot rotates
    raw = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    raw.global_scale = 2.0**params.scale_bits
    raw.generate_galois_keys()
    x = _data(min(n, params.slots))
    w = np.cos(np.arange(x.size))
    ex, rx = ctx.encrypt(x), ts.ckks_vector(raw, x.tolist())
    wl = w.tolist()
    rows = [
        ("CKKS encrypt", lambda: ctx.encrypt(x), lambda: ts.ckks_vector(raw, x.tolist())),
        ("CKKS ct×ct multiply", lambda: ex * ex, lambda: rx * rx),
        ("CKKS dot with plaintext", lambda: ex.dot(w), lambda: rx.dot(wl)),
    ]
    return [PeerRow(task, "tenseal", x.size, _best(v, repeats), _best(p, repeats),
                    f"N={params.poly_modulus_degree}") for task, v, p in rows]


# --- Paillier: Veil vs phe + gmpy2 -------------------------------------------------------------
def _paillier(n: int, repeats: int) -> list[PeerRow]:
    from veil import he

    keys = he.PaillierKeyPair.generate(2048)
    pub, priv = keys.to_phe()
    m = min(n, PHE_MAX)
    x = _data(m)
    keys.public_key.encrypt(x)  # builds the fixed-base table once, as any long-lived key does
    enc_veil = _best(lambda: keys.public_key.encrypt(x), repeats)
    enc_phe = _best(lambda: [pub.encrypt(float(v)) for v in x], 1)
    parties = 10

    def veil_agg() -> Any:
        vecs = [keys.public_key.encrypt_packed(x, precision_bits=32, max_addends=parties)
                for _ in range(parties)]
        return keys.decrypt(sum(vecs[1:], vecs[0]))

    def phe_agg() -> Any:
        vecs = [[pub.encrypt(float(v)) for v in x] for _ in range(parties)]
        sums = [sum(col[1:], col[0]) for col in zip(*vecs)]
        return [priv.decrypt(s) for s in sums]

    return [
        PeerRow("Paillier encrypt (2048-bit)", "phe+gmpy2", m, enc_veil, enc_phe),
        PeerRow("Paillier 10-party sum (enc+add+dec)", "phe+gmpy2", m,
                _best(veil_agg, repeats), _best(phe_agg, 1), "Veil packs values"),
    ]


# --- MPC: Veil vs raw CrypTen and MPyC ---------------------------------------------------------
def _veil_mpc_job(party: Any, n: int, repeats: int) -> dict[str, float]:
    import torch

    x = party.share(torch.linspace(-1, 1, n) if party.rank == 0 else None, src=0, shape=(n,))
    y = party.share(torch.linspace(1, 2, n) if party.rank == 1 else None, src=1, shape=(n,))
    out = {"mul": _best(lambda: x * y, repeats), "lt": _best(lambda: x < y, repeats)}
    party.reveal((x * y).sum())
    return out


def _raw_crypten_times(n: int, repeats: int, parties: int) -> dict[str, float]:
    from veil.mpc import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"   # the same dealer provider Veil uses by default

    def job() -> dict[str, float]:  # crypten's launcher has already called crypten.init()
        import torch

        x = crypten.cryptensor(torch.linspace(-1, 1, n), src=0)
        y = crypten.cryptensor(torch.linspace(1, 2, n), src=1)
        return {"mul": _best(lambda: x * y, repeats), "lt": _best(lambda: x < y, repeats)}

    with warnings.catch_warnings():
        # crypten's own TTPServer calls crypten.init() a second time in the dealer process; the
        # forked processes inherit this filter
        warnings.filterwarnings("ignore", message="CrypTen is already initialized",
                                category=RuntimeWarning)
        results = crypten.mpc.run_multiprocess(parties)(job)()
    if not results or any(r is None for r in results):
        raise RuntimeError("raw CrypTen run failed (a party returned nothing)")
    return results[0]


MPYC_SCRIPT = r'''
import os, time
from mpyc.runtime import mpc
async def main():
    await mpc.start()
    n, repeats = int(os.environ["N"]), int(os.environ["REPEATS"])
    secfxp = mpc.SecFxp(32)
    x = mpc.input([secfxp(i / n) for i in range(n)], senders=0)
    y = mpc.input([secfxp(1 + i / n) for i in range(n)], senders=1 % len(mpc.parties))
    best = {}
    for name, fn in (("mul", lambda: mpc.schur_prod(x, y)),
                     ("lt", lambda: [a < b for a, b in zip(x, y)])):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            await mpc.gather(fn())
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    if mpc.pid == 0:
        print("RESULT", best["mul"], best["lt"], flush=True)
    await mpc.shutdown()
mpc.run(main())
'''


def _mpyc_times(n: int, repeats: int, parties: int) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "mpyc_peer.py"
        script.write_text(MPYC_SCRIPT)
        env = {**os.environ, "N": str(n), "REPEATS": str(repeats)}
        try:
            proc = subprocess.run([sys.executable, str(script), f"-M{parties}", "--no-log"],
                                  env=env, capture_output=True, text=True, cwd=tmp,
                                  timeout=MPC_PEER_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, mul, lt = line.split()
            return {"mul": float(mul), "lt": float(lt)}
    raise RuntimeError(f"MPyC run failed: {proc.stderr[-1000:]}")


def _mpc(n: int, repeats: int) -> list[PeerRow]:
    from veil import mpc

    rows = []
    for parties in (2, 3):
        veil = mpc.run(_veil_mpc_job, parties=parties, args=(n, repeats), timeout=300)[0]
        raw = _raw_crypten_times(n, repeats, parties)
        for op in ("mul", "lt"):
            rows.append(PeerRow(f"MPC {op} ({parties} parties)", "crypten", n, veil[op], raw[op],
                                "Veil adds CSPRNG shares + accounting"))
    mpyc = _mpyc_times(n, repeats, 3)
    veil3 = {r.task: r.veil_s for r in rows}
    for op in ("mul", "lt"):
        peer_s = float("nan") if mpyc is None else mpyc[op]
        rows.append(PeerRow(f"MPC {op} (3 parties)", "mpyc", n, veil3[f"MPC {op} (3 parties)"],
                            peer_s, "MPyC SecFxp(32); timed out" if mpyc is None else
                            "MPyC SecFxp(32), Shamir"))
    return rows


COMPARISONS: dict[str, Callable[[int, int], list[PeerRow]]] = {
    "tenseal": _ckks, "phe": _paillier, "crypten+mpyc": _mpc,
}


def run_peers(n: int, *, repeats: int = 3, progress: Progress | None = None) -> list[PeerRow]:
    """Run every comparison at size ``n`` (best of ``repeats`` per side)."""
    rows: list[PeerRow] = []
    for name, fn in COMPARISONS.items():
        if progress:
            progress(f"peers: {name}")
        rows += fn(n, repeats)
    return rows


def table(rows: list[PeerRow]) -> Any:
    """A rich Table of the comparisons."""
    from rich.table import Table

    t = Table(title="veil bench peers (ratio = peer time / Veil time; > 1 means Veil is faster)")
    for col in ("task", "peer", "n", "Veil", "peer", "ratio", "note"):
        t.add_column(col, justify="left" if col in ("task", "peer", "note") else "right")
    for r in rows:
        t.add_row(r.task, r.peer, f"{r.size:,}", f"{r.veil_s * 1e3:.2f} ms",
                  f"{r.peer_s * 1e3:.2f} ms", f"{r.ratio:.2f}×", r.note)
    return t


def json_text(rows: list[PeerRow]) -> str:
    """The rows, their ratios and the environment (versions, machine, git) as JSON text."""
    doc = {"environment": environment(), "command": "peers",
           "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
           "median_ratio": statistics.median(r.ratio for r in rows) if rows else None}
    return json.dumps(doc, indent=2, default=str)


def write_json(rows: list[PeerRow], path: str | Path) -> None:
    """Write :func:`json_text` to ``path``."""
    Path(path).write_text(json_text(rows))


def plot(rows: list[PeerRow], path: str | Path) -> None:
    """Horizontal bars of peer time / Veil time (log scale; the line at 1 means parity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.task} vs {r.peer}" for r in rows]
    ratios = [r.ratio for r in rows]
    fig, ax = plt.subplots(figsize=(8.0, 0.35 * len(rows) + 1.2))
    ax.barh(labels, ratios, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("peer time / Veil time (> 1: Veil faster)")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
