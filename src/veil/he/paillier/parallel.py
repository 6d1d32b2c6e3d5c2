"""Batch Paillier encryption and decryption across worker processes.

Each worker draws its own randomness from ``os.urandom`` (the kernel CSPRNG; forked children never
share a user-space generator state). On Linux workers are forked after the parent built its
fixed-base table, so they start at once and share it copy-on-write; elsewhere they are spawned and
build their own. Only residues and ``n`` (plus p and q for the key holder's CRT path) cross the
pipe to the workers, which are this process's own children; decryption workers receive p and q.
"""

from __future__ import annotations

import multiprocessing
import secrets
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from gmpy2 import mpz

from veil.he.paillier.arith import CrtKey
from veil.he.paillier.core import PublicKeyBase

# Encrypting fewer values than this with workers > 1 runs serially: below it, starting processes
# costs more than it saves (a 2048-bit encryption takes ~0.3-1 ms).
PARALLEL_MIN = 2048
# Decryption is ~20x dearer per ciphertext (two secret-exponent exponentiations), so it pays off
# sooner.
PARALLEL_MIN_DECRYPT = 128

_STATE: dict[str, Any] = {}


def _worker(args: tuple[str, int, int | None, int | None, list[int]]) -> list[int]:
    token, n, p, q, residues = args
    state = _STATE.get(token)
    if state is None:  # spawned worker: rebuild from the numbers
        pk = PublicKeyBase._trusted(mpz(n))
        crt = CrtKey(p, q) if p is not None and q is not None else None
        state = _STATE[token] = (pk, crt)
    pk, crt = state
    return [int(c) for c in pk._encrypt_residues(residues, crt=crt)]


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _decrypt_worker(args: tuple[int, int, list[int]]) -> list[int]:
    p, q, cs = args
    return [int(m) for m in CrtKey(p, q).decrypt([mpz(c) for c in cs])]


def decrypt_residues(crt: Any, cs: list[mpz], workers: int) -> list[mpz]:
    """``crt.decrypt(cs)``, spread over ``workers`` processes for large batches."""
    if workers <= 1 or len(cs) < PARALLEL_MIN_DECRYPT:
        return crt.decrypt(cs)
    step = -(-len(cs) // workers)
    jobs = [
        (int(crt.p), int(crt.q), [int(c) for c in cs[i : i + step]])
        for i in range(0, len(cs), step)
    ]
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=_context()) as pool:
        parts = list(pool.map(_decrypt_worker, jobs))
    return [mpz(m) for part in parts for m in part]


def encrypt_residues_parallel(pk: Any, residues: list[int], crt: Any, workers: int) -> list[mpz]:
    """Encrypt ``residues`` (each in ``[0, n)``) with ``workers`` processes; same order."""
    ctx = _context()
    # Build the tables before forking so the children inherit them.
    pk._encrypt_residues([0], crt=crt, warm=True)
    token = secrets.token_hex(8)
    _STATE[token] = (pk, crt)
    try:
        step = -(-len(residues) // workers)
        chunks = [residues[i : i + step] for i in range(0, len(residues), step)]
        p = int(crt.p) if crt is not None else None
        q = int(crt.q) if crt is not None else None
        jobs = [(token, int(pk.n), p, q, [int(m) for m in chunk]) for chunk in chunks]
        with ProcessPoolExecutor(max_workers=len(chunks), mp_context=ctx) as pool:
            parts = list(pool.map(_worker, jobs))
    finally:
        _STATE.pop(token, None)
    return [mpz(c) for part in parts for c in part]


def encrypt_residues(pk: PublicKeyBase, residues: list[int], crt: CrtKey | None,
                     workers: int) -> list[mpz]:
    """``pk``'s encryptions of ``residues`` (each in ``[0, n)``); batches of at least
    :data:`PARALLEL_MIN` with ``workers > 1`` are spread over that many processes."""
    if workers > 1 and len(residues) >= PARALLEL_MIN:
        return encrypt_residues_parallel(pk, residues, crt, workers)
    return pk._encrypt_residues(residues, crt=crt)
