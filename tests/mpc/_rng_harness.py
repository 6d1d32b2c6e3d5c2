"""A minimal fork-based launcher for the randomness/accounting tests and benchmarks.

It runs ``fn(crypten, rank, *args)`` in ``world`` party processes (plus CrypTen's dealer process
for ``provider="TTP"``), with Veil's patches (``veil.mpc._crypten.install``: CSPRNG, messages,
accounting) or without them (``veil=False``: raw CrypTen, the baseline). The session's
own launcher is
``veil.mpc.run``; this one exists so that the patches can be tested in isolation and compared
against raw CrypTen in the same harness.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import tempfile
import traceback
from typing import Any


def _child(fn, rank, world, rendezvous, provider, veil, before_init, q, args):
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank),
                       "RENDEZVOUS": f"file://{rendezvous}", "DISTRIBUTED_BACKEND": "gloo"})
    try:
        from veil.mpc._crypten import import_crypten, install

        crypten = import_crypten()
        crypten.config.cfg.mpc.provider = provider
        if rank == world:  # the dealer
            if veil:
                install(crypten)
            crypten.mpc.provider.TTPServer()
            q.put((rank, "ok", None))
            return
        if veil and before_init:
            install(crypten)
        crypten.init()
        if veil:
            from veil.mpc import accounting

            install(crypten)
            accounting.reset()
        result = fn(crypten, rank, *args)
        crypten.uninit()
        # plain pickle copies tensors by value (the torch reducer would pass shared memory
        # handles that die with this process)
        q.put((rank, "ok", pickle.dumps(result)))
    except BaseException:
        q.put((rank, "err", traceback.format_exc()))


def run_parties(fn, world: int, *, args: tuple = (), provider: str = "TTP", veil: bool = True,
                before_init: bool = False, timeout: float = 180.0) -> list[Any]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    fd, rendezvous = tempfile.mkstemp(prefix="veil-rng-")
    os.close(fd)
    os.unlink(rendezvous)
    ranks = list(range(world + (1 if provider == "TTP" else 0)))
    procs = [ctx.Process(target=_child, args=(fn, r, world, rendezvous, provider, veil,
                                              before_init, q, args), daemon=True)
             for r in ranks]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors = []
    try:
        while len(results) + len(errors) < len(ranks):
            try:
                rank, status, value = q.get(timeout=timeout)
            except queue_mod.Empty:
                raise RuntimeError(
                    f"parties timed out after {timeout}s; got {sorted(results)}") from None
            if status == "ok":
                results[rank] = pickle.loads(value) if value is not None else None
            else:
                errors.append((rank, value))
                break
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.5)
            if p.is_alive():
                p.kill()
                p.join()
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)
    if errors:
        raise RuntimeError(f"party {errors[0][0]} failed:\n{errors[0][1]}")
    return [results[r] for r in range(world)]
