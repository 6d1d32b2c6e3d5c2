"""``veil.mpc.run``: run a job as N party processes (plus the dealer) on this machine.

Processes are started from a *forkserver* that has torch and crypten preloaded
(:mod:`veil.mpc._runtime.preload`), so a party starts in tens of milliseconds instead of paying
the 2-3 s of importing torch that ``spawn`` costs, without forking the caller (which may hold
threads, CUDA
or open sockets). Each party process:

* puts itself in its own process group (the launcher kills the whole group);
* asks the kernel to SIGKILL it when its parent (the forkserver, which exits with the launcher)
  dies (``prctl(PR_SET_PDEATHSIG)``), and watches a pipe from the launcher as a second line;
* reports phases, its result or its failure to the launcher over a pipe, and, when the
  launcher's logging is on, its ``veil.*`` log records (JSON, see :mod:`veil.mpc.logs`).

Results come back over ``multiprocessing`` pipes, i.e. they are pickled. That is acceptable here
because both ends are this user's own processes on this machine; nothing that another party sent
over the network is ever unpickled outside CrypTen's restricted unpickler.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from veil.errors import ConfigurationError, PartyFailure
from veil.mpc import logs
from veil.mpc._runtime.jobs import JobRef, job_ref, resolve_job
from veil.mpc._runtime.monitor import check_stopped, rank_label
from veil.mpc._runtime.wiring import TRANSPORTS, Wiring, local_wiring, tls_local_wiring
from veil.mpc.providers import DEFAULT_TIMEOUT, SessionConfig, make_config

__all__ = ["run", "JobRef", "job_ref", "resolve_job", "honour_sigint"]

_GRACE = 2.0  # after a report that blames another party: wait this long for a firmer one
_OWN_GRACE = 0.3  # after a party reports its own error: collect the others' for this long
_PR_SET_PDEATHSIG = 1
_ctx_lock = threading.Lock()


_EXTRA_PRELOAD: list[str] = []


def preload(*modules: str) -> None:
    """Import ``modules`` in the process that forks local parties, once, when it starts.

    Every party then starts with them loaded instead of importing them itself (which costs a few
    hundred milliseconds per run when several parties import on few cores). Takes effect for
    the next start of that process (the first :func:`run` in this interpreter); later calls of
    :func:`run` reuse it. Higher layers (``veil.stats``, ``veil.models``) register their party-side
    modules here by name.
    """
    for name in modules:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ConfigurationError(f"preload takes dotted module names, got {name!r}")
    with _ctx_lock:
        _EXTRA_PRELOAD.extend(m for m in modules if m not in _EXTRA_PRELOAD)


def _context() -> Any:
    with _ctx_lock:
        ctx = multiprocessing.get_context("forkserver")
        from multiprocessing import forkserver

        if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            ctx.set_forkserver_preload(["veil.mpc._runtime.preload", *_EXTRA_PRELOAD])
            # The server (and every party forked from it) inherits this environment: keep
            # torch's C++ warnings about peers that vanished out of the parties' stderr.
            saved = os.environ.get("TORCH_CPP_LOG_LEVEL")
            os.environ["TORCH_CPP_LOG_LEVEL"] = saved or "ERROR"
            try:
                with _sigint_ignored():  # Ctrl-C goes to the launcher, not the server's import
                    forkserver.ensure_running()
            finally:
                if saved is None:
                    del os.environ["TORCH_CPP_LOG_LEVEL"]
        return ctx


@contextlib.contextmanager
def _sigint_ignored() -> Any:
    """Start a process that inherits SIGINT as ignored (the terminal's Ctrl-C reaches the
    whole foreground process group; the launcher handles it and kills the parties)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def honour_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt in this (main) thread, even if it was ignored.

    A process started as a shell's background job (``veil stats ... &`` in a script) inherits
    SIGINT as ignored, so ``kill -INT`` did nothing and the run went on to the end. Command-line
    entry points call this first: an interrupt then reaches :func:`run`, which kills every party
    (their process groups) before the KeyboardInterrupt propagates; the CLI exits with 130.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(
            signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_main(rank: int, master: str, config: SessionConfig, ref: JobRef | None,
                args: tuple[Any, ...], out: Any, life: Any, store_path: str | None = None,
                wiring: Wiring | None = None, log_levels: dict[str, int] | None = None) -> None:
    """Entry point of every local party / dealer process."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent()
    lock = threading.Lock()

    def watchdog() -> None:  # the launcher's end of `life` closes when the launcher dies
        with contextlib.suppress(BaseException):
            life.recv()
        os._exit(70)

    threading.Thread(target=watchdog, name="veil-mpc-watchdog", daemon=True).start()

    def send(data: bytes) -> None:
        with lock:
            out.send_bytes(data)

    def report(kind: str, payload: Any) -> None:
        # Plain pickle (not multiprocessing's ForkingPickler, which would pass tensors through
        # shared memory that vanishes when this process exits).
        send(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))

    if log_levels:
        logs.forward_records(send, log_levels)

    def finish_failed(failure: PartyFailure) -> None:
        with contextlib.suppress(BaseException):
            report("failure", failure)
        if rank == 0:
            time.sleep(LINGER)  # keep the session store up so the others can read why
        os._exit(3)

    try:
        from veil.mpc._runtime.party import LINGER, run_process

        job = resolve_job(ref) if ref is not None else None
        result = run_process(job, rank=rank, master=master, config=config, args=args,
                             reporter=report, fail_fast=finish_failed, store_path=store_path,
                             wiring=wiring)
    except PartyFailure as failure:
        finish_failed(failure)
    except BaseException as exc:
        finish_failed(PartyFailure(
            f"{rank_label(rank, config.world_size)} could not run: {type(exc).__name__}: {exc}",
            rank=rank, phase="start"))
    try:
        report("result", result)
    except Exception as exc:
        finish_failed(PartyFailure(
            f"party {rank}'s job returned a value that cannot be sent back "
            f"({type(exc).__name__}: {exc}); return tensors, numbers, dicts or lists",
            rank=rank, phase="result"))
    os._exit(0)


def run(
    job: Callable[..., Any],
    parties: int = 3,
    *,
    args: Sequence[Any] = (),
    per_party_args: Sequence[Sequence[Any]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    provider: str = "dealer",
    allow_party0_sees_inputs: bool = False,
    device: str = "auto",
    precision_bits: int = 16,
    transport: str = "local",
) -> list[Any]:
    """Run ``job(party, *args, *per_party_args[rank])`` in ``parties`` processes on this machine.

    Returns each party's return value, index = rank. Raises :class:`PartyFailure` naming the rank
    and phase if any party raises, dies, hangs or cannot be reached (every communication is
    bounded by ``timeout`` seconds, the rendezvous by ``max(timeout, 30)``); no process is left
    behind. ``provider="dealer"`` (default) adds a
    dealer process that holds no inputs; ``provider="tfp"`` lets party 0 generate the triples and
    needs ``allow_party0_sees_inputs=True``.

    ``transport``: ``"local"`` (default: Unix sockets in a private directory, see
    :mod:`veil.mpc._runtime.wiring`), ``"tls"`` (mutually authenticated TLS 1.3 on loopback
    with ephemeral identities, the multi-host code path) or ``"gloo"`` (torch's plaintext gloo
    on loopback, whose ports any local process can connect to: for comparisons only).
    When this process's ``veil`` loggers are enabled for INFO or DEBUG, the parties log at the
    same levels and their records are re-emitted here as they arrive (:mod:`veil.mpc.logs`).
    """
    config = make_config(world_size=parties, provider=provider, timeout=timeout,
                         allow_party0_sees_inputs=allow_party0_sees_inputs,
                         precision_bits=precision_bits, device=device)
    if transport not in TRANSPORTS:
        raise ConfigurationError(f"transport must be one of {TRANSPORTS}, got {transport!r}; "
                                 "'local' is the secure default")
    ref = job_ref(job)
    args = tuple(args)
    per_party = _per_party(per_party_args, parties)
    ctx = _context()
    master = f"127.0.0.1:{_free_port()}"  # no store listens there: see _private_store
    store_dir, store_path = _private_store()
    total = parties + (1 if config.has_dealer else 0)
    wiring = _wiring(transport, store_dir, total, parties)
    levels, log, t0 = logs.child_levels(), logging.getLogger(logs.DRIVER), time.perf_counter()
    procs: list[Any] = []
    conns: dict[Any, int] = {}
    lifelines: list[Any] = []
    ok = False
    skip_main = ref.module != "__main__" and not _mentions_main(args, per_party)
    try:
        with _main_import(needed=not skip_main):
            for rank in range(total):
                job_args = args + per_party[rank] if rank < parties else ()
                out_r, life_w = _start(ctx, procs, rank, parties, (
                    rank, master, config, ref if rank < parties else None, job_args),
                    (store_path, _own(wiring, rank), levels))
                conns[out_r] = rank
                lifelines.append(life_w)
        logs.milestone(log, f"launched {parties} parties" + " and the dealer" * (
            total > parties) + f" (transport {transport}, provider {provider})", t0)
        results = _collect(procs, conns, config)
        ok = True
        return results
    finally:
        kill_all(procs, graceful=ok)
        if levels:
            _drain_records(procs, conns)
        logs.milestone(log, f"all {parties} parties done" if ok else "session failed", t0)
        for c in list(conns) + lifelines:
            c.close()
        _remove_store(store_dir)


def _start(ctx: Any, procs: list[Any], rank: int, parties: int, head: tuple[Any, ...],
           tail: tuple[Any, ...]) -> tuple[Any, Any]:
    """Start one party (or the dealer): ``child_main(*head, out, life, *tail)``; returns the
    launcher's ends of its result pipe and of its lifeline."""
    out_r, out_w = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, daemon=True, name=f"veil-mpc-{rank_label(rank, parties)}",
                       args=(*head, out_w, life_r, *tail))
    proc.start()
    out_w.close()
    life_r.close()
    procs.append(proc)
    return out_r, life_w


def _drain_records(procs: list[Any], conns: dict[Any, int]) -> None:
    """After the session: the log records the processes sent after the last report."""
    for conn, rank in conns.items():
        with contextlib.suppress(EOFError, OSError):
            while conn.poll():
                data = conn.recv_bytes()
                if logs.is_record_frame(data):
                    logs.reemit(data, process=procs[rank].name, pid=procs[rank].pid)


def _per_party(per_party_args: Sequence[Sequence[Any]] | None, parties: int
               ) -> list[tuple[Any, ...]]:
    if per_party_args is None:
        return [() for _ in range(parties)]
    try:
        per_party = [tuple(a) for a in per_party_args]
    except TypeError as exc:
        raise ConfigurationError(
            "per_party_args must be a list with one tuple of arguments per party, got "
            f"{per_party_args!r}") from exc
    if len(per_party) != parties:
        raise ConfigurationError(
            f"per_party_args must hold one tuple per party ({parties}), got {len(per_party)}")
    return per_party


def _wiring(transport: str, store_dir: str, total: int, parties: int) -> Wiring | None:
    if transport == "local":
        return local_wiring(store_dir, total)
    if transport == "tls":
        return tls_local_wiring(total, parties)
    return None  # "gloo"


def _own(wiring: Wiring | None, rank: int) -> Wiring | None:
    """What party ``rank`` gets: only its own private key travels to it."""
    if wiring is None or not wiring.identities:
        return wiring
    return dataclasses.replace(wiring, identities={rank: wiring.identities[rank]})


def _private_store() -> tuple[str, str]:
    """A directory only this user can enter (0700) and, in it, the store file's secret name.

    The name (256 random bits from :mod:`secrets`) reaches the parties inside the pickled
    process arguments, i.e. through the forkserver's pipe: never argv or the environment.
    """
    store_dir = tempfile.mkdtemp(prefix="veil-mpc-")  # mode 0700
    os.chmod(store_dir, stat.S_IRWXU)
    return store_dir, os.path.join(store_dir, secrets.token_hex(32))


def _remove_store(store_dir: str) -> None:
    shutil.rmtree(store_dir, ignore_errors=True)


def _mentions_main(args: tuple, per_party: list[tuple]) -> bool:
    """Whether the job arguments refer to anything defined in the ``__main__`` script."""
    try:
        return b"__main__" in pickle.dumps((args, per_party), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # unpicklable here: let multiprocessing report it, with the main module
        return True


_start_lock = threading.Lock()


@contextlib.contextmanager
def _main_import(*, needed: bool) -> Any:
    """Start processes without re-running the ``__main__`` script in them when not ``needed``.

    multiprocessing re-imports the parent's main script in every child it starts (to find
    objects defined there). When the job lives in an importable module and its arguments mention
    nothing from ``__main__``, that import only costs time (a benchmark script importing pytest:
    ~0.1 s per process) and runs the script's module-level code once more per party.
    """
    from multiprocessing import spawn

    if needed:
        yield
        return
    with _start_lock:
        original = spawn.get_preparation_data

        def prepare(name: str) -> dict[str, Any]:
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = prepare
        try:
            yield
        finally:
            spawn.get_preparation_data = original


def _collect(procs: list[Any], conns: dict[Any, int], config: SessionConfig) -> list[Any]:
    ws = config.world_size
    results: dict[int, Any] = {}
    failures: dict[int, PartyFailure] = {}
    deaths: dict[int, int] = {}
    phases = {r: "start" for r in range(len(procs))}
    open_conns = dict(conns)
    sentinels = {p.sentinel: r for r, p in enumerate(procs)}
    first_blame: float | None = None
    stopped_since: dict[int, float] = {}

    def drain(conn: Any) -> None:
        rank = open_conns[conn]
        try:
            while conn.poll():
                data = conn.recv_bytes()
                if logs.is_record_frame(data):  # only sent while the driver's logging is on
                    logs.reemit(data, process=procs[rank].name, pid=procs[rank].pid)
                    continue
                # Our own child process on this machine (see the module docstring): trusted.
                kind, payload = pickle.loads(data)  # noqa: S301
                if kind == "phase":
                    phases[rank] = str(payload)
                elif kind == "result" and rank < ws:  # the dealer's "result" is its exit
                    results[rank] = payload
                elif kind == "failure":
                    failures[rank] = payload
        except (EOFError, OSError):
            del open_conns[conn]

    own_since: float | None = None
    while len(results) < ws:
        if deaths:
            break
        if own_since is None and any(f.rank == r for r, f in failures.items()):
            own_since = time.monotonic()  # collect the others' reports for a moment
        if own_since is not None and time.monotonic() - own_since > _OWN_GRACE:
            break
        if first_blame is not None and time.monotonic() - first_blame > _GRACE:
            break
        ready = multiprocessing.connection.wait(list(open_conns) + list(sentinels), timeout=0.2)
        for obj in ready:
            if obj in open_conns:
                drain(obj)
        for obj in ready:
            if obj in sentinels:
                rank = sentinels.pop(obj)
                for conn, r in list(open_conns.items()):
                    if r == rank:
                        drain(conn)
                code = procs[rank].exitcode
                if rank not in results and rank not in failures and code != 0:
                    deaths[rank] = code if code is not None else -1
                elif rank not in results and rank not in failures and rank < ws:
                    deaths[rank] = 0
        if failures and first_blame is None:
            first_blame = time.monotonic()
        check_stopped(procs, sentinels, stopped_since, deaths, config.timeout + _GRACE * 2)
    if len(results) == ws:  # every party passed the final barrier: the session succeeded
        return [results[r] for r in range(ws)]
    codes = {r: p.exitcode for r, p in enumerate(procs)}
    raise _choose_failure(failures, deaths, phases, ws, codes)


def _choose_failure(failures: dict[int, PartyFailure], deaths: dict[int, int],
                    phases: dict[int, str], ws: int,
                    codes: dict[int, int | None] | None = None) -> PartyFailure:
    own = sorted(r for r, f in failures.items() if f.rank == r)
    if own:
        f = failures[own[0]]
        return PartyFailure(str(f), rank=f.rank, phase=f.phase)
    if deaths:
        rank = min(deaths)
        code = deaths[rank]
        how = ("was stopped (SIGSTOP) and never resumed" if code == -signal.SIGSTOP else
               f"was killed by {signal.Signals(-code).name}" if code < 0 and
               -code in signal.Signals._value2member_map_ else
               f"exited with status {code} without reporting")
        seen = "; ".join(f"{rank_label(r, ws)}: {f}" for r, f in sorted(failures.items()))
        hint = ""
        if code > 0 and phases[rank] == "start":
            hint = ("; it died before the job started: if you call mpc.run from a script, put "
                    "that call (and any other work) under `if __name__ == \"__main__\":` "
                    "because each party re-imports the script to find the job, and see the "
                    "party's traceback above")
        return PartyFailure(
            f"{rank_label(rank, ws)} {how} during phase {phases[rank]!r}"
            + (f" (others saw: {seen})" if seen else "") + hint, rank=rank, phase=phases[rank])
    if failures:
        # A rank that reported a failure itself was alive to do so: it is not the culprit.
        blamed = Counter(f.rank for f in failures.values()
                         if f.rank is not None and f.rank not in failures)
        if blamed:
            culprit = blamed.most_common(1)[0][0]
            f = next(f for f in failures.values() if f.rank == culprit)
            return PartyFailure(str(f), rank=culprit, phase=phases.get(culprit, f.phase))
        f = failures[min(failures)]
        return PartyFailure(str(f), rank=f.rank, phase=f.phase)
    return PartyFailure(
        f"the session ended without results from every party (phases: {phases}, exit codes: "
        f"{codes})", rank=None, phase="finish")


def kill_all(procs: list[Any], *, graceful: bool) -> None:
    """Wait briefly for clean exits, then SIGKILL every party's process group and reap it."""
    deadline = time.monotonic() + (5.0 if graceful else 0.0)
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        if p.pid is not None:
            p.join(timeout=5.0)
