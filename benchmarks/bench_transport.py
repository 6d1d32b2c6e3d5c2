"""Veil's authenticated transport vs torch's gloo, same jobs, same run, side by side.

Three transports of ``veil.mpc.run`` (see ``veil.mpc._runtime.wiring``):

* ``gloo``: torch's gloo on loopback, plaintext and unauthenticated (what Veil used before);
* ``local``: Veil's backend over Unix sockets in the session's private directory (the default);
* ``tls``: Veil's backend over mutually authenticated TLS 1.3 on loopback with ephemeral
  identities: the code path of a multi-host ``veil party --manifest`` session.

Workloads, 2 and 3 parties with the dealer: ``mul``, ``matmul`` (316 x 316 ~ 10^5 elements) and
``lt`` (comparison) on 10^5 elements, and the joint correlation matrix + OLS release on 10^4
rows (4 columns). Each configuration is one session; each workload runs once to warm up, then
``REPEATS`` times between barriers; the slowest party's median counts. Bytes: party 0's
counted payload bytes (``veil.mpc.accounting``: the transport's exact traffic for Veil's
backend, gloo's algorithms' model for gloo) and, for Veil's backend, the frames it sent
(24 bytes of framing each; TLS adds its records' overhead on top). ``lo``: every byte the
kernel sent on the loopback interface during one run of the workload (all processes; TCP/IP
headers, gloo's framing and TLS records included): the real traffic of each transport.

Run: ``python benchmarks/bench_transport.py`` (prints the tables) or
``python -m pytest benchmarks/bench_transport.py -o python_files='bench_*.py' --benchmark-only -s``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch

from veil import mpc

NUMEL = 10**5
SIDE = 316
ROWS = 10_000
REPEATS = int(os.environ.get("VEIL_BENCH_REPEATS", "5"))
TRANSPORTS = ("gloo", "local", "tls")
WORKLOADS = ("mul", "matmul", "lt", "corr+ols")


def _workloads(party: Any) -> dict[str, Any]:
    from veil import stats

    g = torch.Generator().manual_seed(1)  # benchmark data, the same in every party
    x = party.share(torch.rand(NUMEL, generator=g) * 4 - 2 if party.rank == 0 else None, src=0,
                    shape=(NUMEL,))
    y = party.share(torch.rand(NUMEL, generator=g) * 4 + 1 if party.rank == 1 else None, src=1,
                    shape=(NUMEL,))
    a = party.share(torch.rand(SIDE, SIDE, generator=g) if party.rank == 0 else None, src=0,
                    shape=(SIDE, SIDE))
    b = party.share(torch.rand(SIDE, SIDE, generator=g) if party.rank == 1 else None, src=1,
                    shape=(SIDE, SIDE))
    rng = np.random.default_rng(party.rank)  # benchmark data, not a secret
    mine = rng.normal(size=(ROWS // party.world_size, 4))
    mine[:, 3] = mine[:, :3] @ np.array([0.5, -1.0, 2.0]) + 0.1 * mine[:, 3]
    return {"mul": lambda: x * y, "matmul": lambda: a @ b, "lt": lambda: x < y,
            "corr+ols": lambda: stats.describe(mine, ["correlation", "linear_regression"],
                                               party=party)}


def loopback_bytes() -> int:
    """Bytes sent on the loopback interface so far (Linux; 0 elsewhere): every transport's
    real traffic, headers and all, as the kernel counts it."""
    try:
        for line in open("/proc/net/dev").read().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    except OSError:
        pass
    return 0


def bench_job(party: Any, repeats: int) -> dict[str, Any]:
    from veil.mpc import accounting
    from veil.mpc._runtime import backend

    comm = party.crypten.comm.get()
    mesh = backend.current()
    out: dict[str, Any] = {}
    for name, fn in _workloads(party).items():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        comm.barrier()
        accounting.reset()
        sent0 = mesh.bytes_sent if mesh is not None else 0
        lo0 = loopback_bytes()
        fn()
        s = accounting.stats()
        comm.barrier()
        lo = loopback_bytes() - lo0
        out[name] = {"times": times, "sent": s["bytes_sent"], "received": s["bytes_received"],
                     "rounds": s["rounds"], "loopback": lo,
                     "wire_sent": (mesh.bytes_sent - sent0) if mesh is not None else None}
    return out


def measure(parties: int, repeats: int = REPEATS) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for transport in TRANSPORTS:
        res = mpc.run(bench_job, parties, args=(repeats,), transport=transport, timeout=600)
        for name in WORKLOADS:
            slowest = [max(r[name]["times"][i] for r in res) for i in range(repeats)]
            table.setdefault(name, {})[transport] = {
                "s": statistics.median(slowest), "sent": res[0][name]["sent"],
                "received": res[0][name]["received"], "rounds": res[0][name]["rounds"],
                "loopback": res[0][name]["loopback"],
                "wire_sent": res[0][name]["wire_sent"]}
    return table


def format_table(parties: int, table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{parties} parties + dealer, loopback, median of {REPEATS} (slowest party)",
             f"{'workload':<10}" + "".join(f"{t + ' ms':>11}" for t in TRANSPORTS)
             + f"{'local/gloo':>12}{'tls/gloo':>10}{'p0 sent gloo':>14}{'p0 sent veil':>14}"
             f"{'lo gloo':>12}{'lo tls':>12}{'lo ratio':>10}"]
    for name, row in table.items():
        g = row["gloo"]
        lines.append(
            f"{name:<10}" + "".join(f"{row[t]['s'] * 1e3:>11.1f}" for t in TRANSPORTS)
            + f"{row['local']['s'] / g['s']:>12.3f}{row['tls']['s'] / g['s']:>10.3f}"
            f"{g['sent']:>14}{row['tls']['sent']:>14}"
            f"{g['loopback']:>12}{row['tls']['loopback']:>12}"
            f"{row['tls']['loopback'] / max(1, g['loopback']):>10.4f}")
    return "\n".join(lines)


@pytest.mark.parametrize("parties", [2, 3])
def test_transports_side_by_side(benchmark: Any, parties: int) -> None:
    table = benchmark.pedantic(measure, args=(parties,), rounds=1, iterations=1)
    benchmark.extra_info["table"] = table
    print("\n" + format_table(parties, table))
    for row in table.values():
        assert all(row[t]["s"] > 0 for t in TRANSPORTS)
        assert row["tls"]["sent"] == row["tls"]["wire_sent"]  # accounting = real payload


def main() -> None:
    for parties in (2, 3):
        print(format_table(parties, measure(parties)), flush=True)
        print()


if __name__ == "__main__":
    sys.exit(main())
