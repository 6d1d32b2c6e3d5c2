"""One process of a session: rendezvous, CrypTen set-up, the job (or the dealer), teardown.

:func:`run_process` is used both by the local launcher (``veil.mpc.run``, one child process per
party) and by ``veil party`` (one party per host). It hides CrypTen's rendezvous pitfalls:

* the rendezvous store is created here (rank 0 hosts a ``TCPStore`` at ``--master HOST:PORT``)
  and handed to ``torch.distributed.init_process_group``, so ``RENDEZVOUS=env://`` and the
  ``WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT`` variables CrypTen checks are set for the user;
* every process group gets ``timeout`` instead of gloo's default of 30 minutes;
* gloo binds to the network interface that routes to the master (``GLOO_SOCKET_IFNAME``), not to
  whatever the host name resolves to (often a loopback address on multi-host set-ups);
* with the dealer provider the dealer is rank ``world_size``; it runs CrypTen's ``TTPServer``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from veil.errors import AuthenticationError, ConfigurationError, PartyFailure, VeilError
from veil.mpc import accounting, logs
from veil.mpc._crypten import install
from veil.mpc._runtime.monitor import TICK, Monitor, rank_label
from veil.mpc._runtime.wiring import Links, Wiring, open_links
from veil.mpc.providers import SessionConfig

__all__ = ["run_process", "parse_master", "open_store", "Reporter"]

Reporter = Callable[[str, Any], None]
DEALER = "dealer"
LINGER = 4 * TICK  # party 0 keeps the store up this long after a failure
# Starting processes, connecting every pair and agreeing keys can take seconds on a loaded
# machine: the rendezvous waits at least this long even when the per-operation timeout is short.
RENDEZVOUS_MIN_S = 30.0
_COMM_ERROR_HINTS = ("gloo", "connection closed", "connection reset", "timed out", "timeout",
                     "socket", "broken pipe", "peer", "store")


def parse_master(master: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[addr]:port``) -> (host, port); ConfigurationError otherwise."""
    text = str(master).strip()
    host, sep, port_s = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ConfigurationError(
            f"master must be HOST:PORT with a port in 1..65535, got {master!r} "
            "(e.g. --master 10.0.0.1:29500)"
        )
    return host, int(port_s)


def _interface_towards(host: str, port: int) -> str | None:
    """Name of the local network interface whose address routes to ``host``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)  # UDP connect: picks a route, sends nothing
            local = s.getsockname()[0]
    except OSError:
        return None
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with the dev environment
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == local for a in addrs):
            return name
    return None


def is_comm_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    if isinstance(exc, RuntimeError) and not isinstance(exc, VeilError):
        text = str(exc).lower()
        return any(h in text for h in _COMM_ERROR_HINTS)
    return isinstance(exc, ConnectionError | TimeoutError)


def open_store(host: str, port: int, *, rank: int, timeout: timedelta,
               path: str | None = None) -> Any:
    """The session's key-value store: rendezvous, heartbeats, phases, error categories.

    Local sessions (``path``): a ``FileStore`` in a private directory (mode 0700) whose file
    name is a 256-bit random secret that reaches the party processes only through the launcher's
    pipes. No socket listens for it, so nothing off this machine can reach it, and on this
    machine only processes that know the name (and may enter the directory) can read or write
    it. Multi-host sessions: party 0 (``rank == 0``) hosts a ``TCPStore`` on ``HOST:PORT``;
    the other processes connect to it, waiting at most ``timeout``.
    """
    import torch.distributed as dist

    if path is not None:
        store = dist.FileStore(path, -1)  # -1: the launcher removes the file, not the last user
        store.set_timeout(timeout)
        return store
    return dist.TCPStore(host, port, world_size=None, is_master=(rank == 0), timeout=timeout,
                         wait_for_workers=False)


@contextlib.contextmanager
def _patched_process_groups(store: Any, timeout: timedelta) -> Iterator[None]:
    """While CrypTen initialises: use our store and our timeout for every process group."""
    import torch.distributed as dist

    orig_init, orig_new = dist.init_process_group, dist.new_group

    @functools.wraps(orig_init)
    def init_process_group(*args: Any, **kwargs: Any) -> None:
        kwargs.pop("init_method", None)
        kwargs["store"] = store
        kwargs["timeout"] = timeout
        return orig_init(*args, **kwargs)

    @functools.wraps(orig_new)
    def new_group(*args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = timeout
        return orig_new(*args, **kwargs)

    dist.init_process_group, dist.new_group = init_process_group, new_group
    try:
        yield
    finally:
        dist.init_process_group, dist.new_group = orig_init, orig_new


def _set_op_timeouts(crypten: Any, timeout: timedelta) -> None:
    """After the rendezvous: every process group waits at most ``timeout`` per operation."""
    from torch.distributed import distributed_c10d as c10d

    from veil.mpc._runtime import backend

    if backend.current() is not None:
        backend.set_timeout(timeout.total_seconds())
        return

    comm = crypten.comm.get()
    groups = [c10d._get_default_group()] + [
        g for g in (getattr(comm, n, None) for n in ("main_group", "ttp_group", "ttp_comm_group"))
        if g is not None]
    for group in groups:
        with contextlib.suppress(ValueError):  # groups this process is not part of
            c10d._set_pg_timeout(timeout, group)


@dataclass
class _State:
    rank: int
    config: SessionConfig
    monitor: Monitor | None = None
    phases: list[str] | None = None
    reporter: Reporter | None = None
    error_phase: tuple[BaseException, str] | None = None

    @property
    def phase(self) -> str:
        return self.phases[-1] if self.phases else "start"

    def set_phase(self, name: str) -> None:
        if self.monitor is not None:
            self.monitor.set_phase(name)
        if self.reporter is not None:
            self.reporter("phase", name)


def _configure_crypten(config: SessionConfig) -> Any:
    from veil.mpc._crypten import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = config.crypten_provider
    crypten.cfg.encoder.precision_bits = config.precision_bits
    # Byte/round counts come from veil.mpc.accounting (always on, cheap); CrypTen's verbose
    # mode would add timers to every communication call, so it stays off.
    crypten.cfg.communicator.verbose = False
    return crypten


def _check_rank(rank: int, config: SessionConfig) -> int:
    """The number of processes of the session (parties plus the dealer); refuses a bad rank."""
    ws = config.world_size
    total = ws + 1 if config.has_dealer else ws
    if not 0 <= rank < total:
        raise ConfigurationError(
            f"rank must be in 0..{total - 1} for {ws} parties"
            f"{' plus the dealer' if config.has_dealer else ''}, got {rank!r}"
        )
    return total


def _set_environment(rank: int, ws: int, host: str, port: int, *, local: bool,
                     backend: str = "gloo") -> None:
    """The variables CrypTen reads, and the interface gloo binds to."""
    env = {"DISTRIBUTED_BACKEND": backend, "RENDEZVOUS": "env://", "WORLD_SIZE": str(ws),
           "RANK": str(rank), "MASTER_ADDR": host, "MASTER_PORT": str(port)}
    os.environ.update(env)
    if backend != "gloo":
        return
    iface = _interface_towards(host, port)
    if local:  # local session: gloo listens on loopback, whatever the caller set
        os.environ["GLOO_SOCKET_IFNAME"] = _interface_towards("127.0.0.1", port) or "lo"
    elif iface and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = iface


def _open_stores(host: str, port: int, *, rank: int, total: int, config: SessionConfig,
                 timeout: timedelta, store_path: str | None, wiring: Wiring | None
                 ) -> tuple[Any, Monitor, Links | None]:
    """The session store and the monitor (with its own connection), and with a Veil transport
    the mesh (listening, not yet connected); PartyFailure if they cannot be opened within
    ``timeout``."""
    ws = config.world_size
    links = None
    try:
        if wiring is not None and wiring.secure:
            links = open_links(wiring, rank, timeout=timeout, store_path=store_path,
                               open_file_store=lambda path: open_store(
                                   host, port, rank=-1, timeout=timeout, path=path))
            store, mon_store = links.store, links.monitor_store
        else:
            store = open_store(host, port, rank=rank, timeout=timeout, path=store_path)
            mon_store = open_store(host, port, rank=-1, timeout=timeout, path=store_path)
        monitor = Monitor(rank=rank, world_size=ws, total=total, timeout=config.timeout,
                          store=mon_store)
    except AuthenticationError as exc:
        if links is not None:
            links.close()
        raise PartyFailure(f"{rank_label(rank, ws)} was refused by party 0: {exc}",
                           rank=0, phase="rendezvous") from exc
    except Exception as exc:
        if links is not None:
            links.close()
        where = (f"could not open the session store {store_path}" if store_path is not None
                 else f"could not host the session store on {host}:{port}" if rank == 0 else
                 f"could not reach party 0's session store at {host}:{port} within "
                 f"{timeout.total_seconds():g} s")
        raise PartyFailure(
            f"{rank_label(rank, ws)} {where}: {type(exc).__name__}: {_short(exc)}. Check that "
            "party 0 runs, that --master names its address and a free port, and the firewall",
            rank=None if rank == 0 else 0, phase="rendezvous") from exc
    return store, monitor, links


def _rendezvous(crypten: Any, store: Any, state: _State, *, total: int, rdv_s: float,
                timeout: timedelta, links: Links | None) -> None:
    """Veil's patches, then ``crypten.init()`` through our store (or, with a Veil transport,
    over the connected mesh); PartyFailure naming who is missing if it fails."""
    rank, ws = state.rank, state.config.world_size
    install(crypten)  # before init: keys are agreed inside crypten.init()
    try:
        pg_store = store
        if links is not None:
            pg_store = _connect_mesh(links, rank, ws, rdv_s)
        with _patched_process_groups(pg_store, timedelta(seconds=rdv_s)), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crypten.init()
        _set_op_timeouts(crypten, timeout)
    except PartyFailure:
        raise
    except Exception as exc:
        missing = [r for r in range(total) if r != rank and not store.check([f"hello/{r}"])]
        who = ", ".join(rank_label(r, ws) for r in missing) or "a party"
        hint = " and start the dealer" if ws in missing else ""
        raise PartyFailure(
            f"rendezvous failed at {rank_label(rank, ws)}: {who} did not join within "
            f"{rdv_s:g} s ({type(exc).__name__}: {_short(exc)}). Start every party "
            f"with the same --world-size and --master{hint}",
            rank=missing[0] if missing else None, phase="rendezvous") from exc


def _connect_mesh(links: Links, rank: int, ws: int, rdv_s: float) -> Any:
    """Connect every pair of processes (authenticated), make the mesh the ``veil`` backend's
    transport; returns the (process-local) store torch's own rendezvous then uses. Until
    :func:`_set_op_timeouts` runs after ``crypten.init()``, waits get the rendezvous bound (key
    agreement is part of the rendezvous, as with gloo)."""
    import torch.distributed as dist

    from veil.mpc._runtime import backend

    try:
        links.mesh.connect(rdv_s)
    except AuthenticationError as exc:
        raise PartyFailure(f"rendezvous failed at {rank_label(rank, ws)}: {exc}",
                           rank=None, phase="rendezvous") from exc
    backend.register()
    backend.attach(links.mesh, rdv_s)
    return dist.HashStore()  # nothing goes through it: the mesh is already connected


def _run_job(crypten: Any, store: Any, state: _State, job: Callable[..., Any] | None,
             args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
    """A party's part: the job, then the final barrier (party 0 marks the session finished)."""
    from veil.mpc.session import Party

    party = Party(_state=state, crypten=crypten)
    state.phases = ["job"]
    state.set_phase("job")
    try:
        result = job(party, *args, **(kwargs or {}))  # type: ignore[misc]
    except BaseException as exc:
        raise _translate(state, exc) from exc
    state.phases = ["finish"]
    state.set_phase("finish")
    try:
        crypten.comm.get().barrier()
        if state.rank == 0:
            store.set("fin", "1")
    except Exception as exc:
        raise _translate(state, exc) from exc
    return result


def _teardown(crypten: Any, store: Any, state: _State, monitor: Monitor,
              timeout: timedelta, links: Links | None = None) -> None:
    """After a clean run: stop the heartbeats, end CrypTen, keep party 0's store up for the
    dealer."""
    monitor.stop()
    with contextlib.suppress(Exception):
        crypten.uninit()  # party 0 tells the dealer to stop
    if state.rank == 0 and state.config.has_dealer:
        with contextlib.suppress(Exception):  # keep the store up until the dealer is done
            store.wait(["dealer_done"], timeout)
    if links is not None and state.rank != 0:
        with contextlib.suppress(Exception):  # party 0 serves the store: it goes last
            store.set(f"bye/{state.rank}", "1")
    if links is not None and state.rank == 0:
        with contextlib.suppress(Exception):
            store.wait([f"bye/{r}" for r in range(1, state.config.world_size)], timeout)


def _start_monitor(state: _State, monitor: Monitor,
                   fail_fast: Callable[[PartyFailure], None] | None) -> None:
    state.monitor = monitor
    if fail_fast is not None:
        monitor.fail_fast = lambda f: fail_fast(_failure_from(state, f[0], f[1]))
    monitor.start()


def _report_failure(exc: Exception, state: _State, monitor: Monitor) -> PartyFailure:
    """The PartyFailure to raise for ``exc``, after telling the others (category only)."""
    rank = state.rank
    failure = exc if isinstance(exc, PartyFailure) else _translate(state, exc)
    if failure.rank == rank:  # the others learn the category only, never the message
        cause = exc.__cause__ if isinstance(exc, PartyFailure) else exc
        monitor.publish_error(cause if cause is not None else exc)
    else:
        monitor.publish_gone(failure.rank)
    if rank == 0 and state.reporter is None:  # (the local launcher's child lingers itself,
        time.sleep(LINGER)  # after reporting): keep the store up so the others read why
    return failure


def run_process(
    job: Callable[..., Any] | None,
    *,
    rank: int,
    master: str,
    config: SessionConfig,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    fail_fast: Callable[[PartyFailure], None] | None = None,
    store_path: str | None = None,
    wiring: Wiring | None = None,
) -> Any:
    """Run one process of a session and return the job's result (``None`` for the dealer).

    ``rank == config.world_size`` runs the dealer. Raises :class:`PartyFailure` naming the rank
    and phase when this or another process fails; ``fail_fast`` (if given) is called from the
    heartbeat thread when another process is known to have failed while this one is blocked.
    ``store_path`` (local sessions): the session store is a file there instead of a TCP store
    hosted by party 0, and gloo listens on the loopback interface only (see :func:`open_store`).
    ``wiring``: the transport (:mod:`.wiring`); ``None`` is gloo.
    """
    import torch

    host, port = parse_master(master)
    total, ws = _check_rank(rank, config), config.world_size
    t0, log = time.perf_counter(), logging.getLogger(logs.logger_name(rank, ws))
    log.info("%s started (%d parties, transport %s, device %s)", rank_label(rank, ws), ws,
             wiring.kind if wiring else "gloo", config.device)
    state = _State(rank=rank, config=config, phases=["rendezvous"], reporter=reporter)
    secure = wiring is not None and wiring.secure
    _set_environment(rank, config.world_size, host, port, local=store_path is not None,
                     backend="veil" if secure else "gloo")
    timeout = timedelta(seconds=config.timeout)
    rdv_s = max(config.timeout, RENDEZVOUS_MIN_S)
    crypten = _configure_crypten(config)
    # Reaching party 0's store waits --timeout (not the longer rendezvous bound): an unreachable
    # master is reported within the time the user asked for.
    store, monitor, links = _open_stores(host, port, rank=rank, total=total, config=config,
                                         timeout=timeout, store_path=store_path,
                                         wiring=wiring)
    store.set_timeout(timedelta(seconds=rdv_s))
    _start_monitor(state, monitor, fail_fast)
    try:
        state.set_phase("rendezvous")
        _rendezvous(crypten, store, state, total=total, rdv_s=rdv_s, timeout=timeout,
                    links=links)
        logs.milestone(log, "session connected", t0)
        accounting.reset()  # count only the job's traffic in party.comm_stats()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // total))
        if rank == config.world_size:
            state.phases = ["dealer"]
            state.set_phase("dealer")
            _run_dealer(crypten, store, monitor)
            result = None
        else:
            result = _run_job(crypten, store, state, job, args, kwargs)
        _teardown(crypten, store, state, monitor, timeout, links)
        logs.milestone(log, "dealer finished" if rank == ws else "job finished", t0, counts=True)
        return result
    except Exception as exc:
        raised = exc.__cause__ if isinstance(exc, PartyFailure) and exc.__cause__ else exc
        log.info("failed in phase %r (%s)", state.phase, type(raised).__name__)  # class only
        failure = _report_failure(exc, state, monitor)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        monitor.stop()
        if links is not None:
            _close_links(links)


def _close_links(links: Links) -> None:
    from veil.mpc._runtime import backend

    backend.detach()
    links.close()


def _run_dealer(crypten: Any, store: Any, monitor: Monitor) -> None:
    from crypten.mpc.provider.ttp_provider import TTPServer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TTPServer()  # serves party 0's requests until "terminate" or a broken connection
    monitor.stop()  # party 0 may leave any moment now: its store goes with it
    try:
        finished = store.check(["fin"])
        store.set("dealer_done", "1")
    except Exception:  # party 0 (the store's host) is gone
        finished = False
    if not finished:
        raise PartyFailure("the dealer lost its connection to party 0 before the session "
                           "finished", rank=0, phase="dealer")


def _failure_from(state: _State, culprit: int | None, how: str) -> PartyFailure:
    ws = state.config.world_size
    if culprit is None:  # nobody to blame: say what this party saw
        return PartyFailure(f"{rank_label(state.rank, ws)} timed out in phase {state.phase!r}: "
                            f"{how}", rank=None, phase=state.phase)
    theirs = ""
    if state.monitor is not None:
        theirs = f"; its last phase: {state.monitor.peer_phase(culprit)!r}"
    return PartyFailure(
        f"{rank_label(culprit, ws)} {how} while {rank_label(state.rank, ws)} was in phase "
        f"{state.phase!r}{theirs}", rank=culprit, phase=state.phase)


def _translate(state: _State, exc: BaseException) -> PartyFailure:
    """Turn an exception inside the job into a PartyFailure naming the right rank."""
    if isinstance(exc, PartyFailure):
        return exc
    if state.error_phase is not None and state.error_phase[0] is exc:
        state.phases = [state.error_phase[1]]  # report the phase the error was raised in
    ws = state.config.world_size
    if is_comm_error(exc) and state.monitor is not None:
        culprit, how = state.monitor.diagnose()
        failure = _failure_from(state, culprit, how)
        return PartyFailure(f"{failure} ({type(exc).__name__}: {_short(exc)})",
                            rank=failure.rank, phase=failure.phase)
    tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    where = traceback.extract_tb(exc.__traceback__)
    loc = f" at {where[-1].filename}:{where[-1].lineno}" if where else ""
    text = (f"{rank_label(state.rank, ws)} raised {tb}{loc} in phase {state.phase!r}")
    return PartyFailure(text, rank=state.rank, phase=state.phase)


def _short(exc: BaseException, limit: int = 300) -> str:
    # no square brackets: gloo puts source paths in them, which terminals' markup misreads
    text = str(exc).replace("\n", " ").replace("[", "(").replace("]", ")").rstrip(". ")
    return text if len(text) <= limit else text[:limit] + "…"
