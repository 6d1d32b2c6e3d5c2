"""Many local sessions at once on one machine: no port races, no crosstalk between sessions.

A local session's rendezvous is a file store in a private directory (no TCP port is picked and
bound later), and gloo binds its own ephemeral ports, so concurrent sessions cannot take each
other's address. Each session's answer must be its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import textwrap

import torch

from veil import mpc


def doubling_job(party, k):
    x = party.share(torch.full((4,), float(k)) if party.rank == 0 else None, src=0)
    return party.reveal(x * 2, to=[0])


def test_sixteen_concurrent_sessions_in_one_process_all_succeed() -> None:
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(
            lambda k: mpc.run(doubling_job, parties=2, args=(k,), timeout=120), range(16)))
    for k, result in enumerate(results):
        assert result[1] is None
        assert torch.allclose(result[0], torch.full((4,), 2.0 * k), atol=1e-3), (k, result)


def test_concurrent_sessions_from_separate_processes_all_succeed() -> None:
    script = textwrap.dedent("""
        import sys, torch
        from veil import mpc
        from tests.mpc.test_concurrent_sessions import doubling_job
        if __name__ == "__main__":
            k = int(sys.argv[1])
            for i in range(4):
                out = mpc.run(doubling_job, parties=2, args=(k + i,), timeout=120)
                assert torch.allclose(out[0], torch.full((4,), 2.0 * (k + i)), atol=1e-3)
            print("ok", k)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(10 * p)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("ok"), (out, err[-2000:])
