"""Liveness of the other processes of a session: heartbeats, published errors, phases.

Every process of a session (parties and dealer) keeps a small side channel in the session's
key-value store (torch.distributed's ``TCPStore``, hosted by rank 0, the same one used for the
rendezvous). A daemon thread increments ``hb/<rank>`` every :data:`TICK` seconds and publishes
the current phase; the same thread watches the other ranks:

* a rank that published ``err/<rank>`` failed inside its job: fail fast, naming it;
* a rank whose counter has not moved for ``timeout`` seconds is dead or stopped: fail fast.

After a communication error the main thread calls :meth:`Monitor.diagnose` to learn *which* rank
broke the session. Only integers, phase names and error *categories* (a class name from
:data:`CATEGORIES`, never a message: messages can hold data values, paths or column names) go
through the store; nothing received from another party is ever unpickled here.
:func:`check_stopped` is the local launcher's backstop for a stopped (SIGSTOP) party.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

TICK = 0.5
MAX_TEXT = 2000  # bytes of a phase name published to the store
# What another party may learn about a failure: its rank (the key) and one of these names.
# Messages stay in the failing party's own log: they can hold data values, paths, column names.
CATEGORIES = frozenset({
    "ConfigurationError", "InsecureParametersError", "BackendUnavailableError",
    "UnsupportedOperationError", "UnsupportedLayerError", "KeyMismatchError",
    "DepthExhaustedError", "SerializationError", "PartyFailure", "PrivacyBudgetExceeded",
    "PolicyViolation", "AggregationAborted", "RemoteServiceError", "VeilError",
    "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError", "ArithmeticError",
    "ZeroDivisionError", "OverflowError", "RuntimeError", "NotImplementedError", "MemoryError",
    "OSError", "FileNotFoundError", "PermissionError", "TimeoutError", "ConnectionError",
    "ImportError", "RecursionError", "AssertionError", "KeyboardInterrupt", "SystemExit",
})
UNKNOWN = "Exception"
DETAILS = "details are in that party's log"


def error_category(exc: BaseException) -> str:
    """The most specific Veil or builtin class of ``exc`` in :data:`CATEGORIES`."""
    for cls in type(exc).__mro__:
        if cls.__name__ in CATEGORIES and cls.__module__ in ("builtins", "veil.errors"):
            return cls.__name__
    return UNKNOWN


def rank_label(rank: int | None, world_size: int) -> str:
    if rank is None:
        return "an unknown party"
    return "the dealer" if rank == world_size else f"party {rank}"


class Monitor:
    """Heartbeat publisher and watcher for one process of a session."""

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        total: int,
        timeout: float,
        store: Any,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.total = total
        self.timeout = timeout
        self._store_timeout = timedelta(seconds=max(1.0, min(timeout, 10.0)))
        # The heartbeat thread gets its own client connection (``store``), so it never shares a
        # socket with the main thread.
        self._store = store
        self._store.set_timeout(self._store_timeout)
        self._phase = "start"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_seen: dict[int, tuple[int, float]] = {}
        self.fail_fast: Callable[[Any], None] | None = None
        self._failed = False
        self._last_ok = time.monotonic()
        self._thread: threading.Thread | None = None

    # -- publishing ---------------------------------------------------------------------------
    def start(self) -> None:
        self._store.set(f"hello/{self.rank}", "1")
        self._beat()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="veil-mpc-heartbeat", daemon=True)
        self._thread.start()
        if self.rank != 0:  # party 0 hosts the store in its own process
            threading.Thread(target=self._watch_store, name="veil-mpc-store-watch",
                             daemon=True).start()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
        self._wake.set()  # publish soon, not only at the next tick

    def publish_error(self, exc: BaseException) -> None:
        """This process failed in its own job: others will name it and learn only its category
        (:func:`error_category`), never the message."""
        self._publish(f"err/{self.rank}", error_category(exc))

    def publish_gone(self, culprit: int | None) -> None:
        """This process leaves because of another one (``culprit``): others must not blame it."""
        self._publish(f"gone/{self.rank}", "" if culprit is None else str(culprit))

    def _publish(self, key: str, text: str) -> None:
        try:
            self._store.set(key, text.encode()[:MAX_TEXT])
        except Exception:  # the store may be gone; the failure is reported anyway
            pass

    def _gone(self, rank: int) -> str | None:
        key = f"gone/{rank}"
        if self._store.check([key]):
            return bytes(self._store.get(key)).decode(errors="replace")
        return None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=TICK)  # it leaves at once unless blocked on a dead store

    def _beat(self) -> None:
        with self._lock:
            phase = self._phase
        self._store.add(f"hb/{self.rank}", 1)
        self._store.set(f"ph/{self.rank}", phase.encode()[:MAX_TEXT])

    def _trigger(self, failure: tuple[int | None, str]) -> None:
        with self._lock:
            if self._failed or self._stop.is_set() or self.fail_fast is None:
                return
            self._failed = True
        if failure[0] is not None and failure[0] != 0:
            self.publish_gone(failure[0])
        self.fail_fast(failure)

    def _watch_store(self) -> None:
        """Store operations can block without end when party 0 is stopped: watch their age."""
        while not self._stop.wait(TICK):
            age = time.monotonic() - self._last_ok
            if age > self.timeout:
                self._trigger((0, f"did not answer for {age:.1f} s (its session store hangs: "
                                  "stopped or cut off)"))
                return

    def _run(self) -> None:
        last_watch = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._beat()
                time.sleep(0.05)  # at most ~20 store updates a second, however busy the job
                failure = None
                # each watch reads every peer's keys: thin it out in large sessions
                if time.monotonic() - last_watch >= TICK * max(1, self.total // 8):
                    last_watch = time.monotonic()
                    failure = self._watch()
            except Exception:
                failure = None if self.rank == 0 or self._stop.is_set() else (
                    0, "is unreachable (the session store it hosts does not answer)")
            else:
                self._last_ok = time.monotonic()
            if failure is not None:
                self._trigger(failure)
                return

    # -- watching -----------------------------------------------------------------------------
    def _counter(self, rank: int) -> int:
        return int(self._store.add(f"hb/{rank}", 0))

    def peer_error(self, rank: int) -> str | None:
        """``"<Category> (details are in that party's log)"`` if ``rank`` published a failure."""
        key = f"err/{rank}"
        if self._store.check([key]):
            name = bytes(self._store.get(key)).decode(errors="replace")
            return f"{name if name in CATEGORIES else UNKNOWN} ({DETAILS})"
        return None

    def peer_phase(self, rank: int) -> str:
        key = f"ph/{rank}"
        try:
            if self._store.check([key]):
                return bytes(self._store.get(key)).decode(errors="replace")
        except Exception:
            pass
        return "unknown"

    def _watch(self) -> tuple[int, str] | None:
        now = time.monotonic()
        for r in range(self.total):
            if r == self.rank:
                continue
            err = self.peer_error(r)
            if err is not None:
                return r, f"failed: {err}"
            if self._gone(r) is not None:
                continue  # it left because of someone else; that one is caught on its own
            count = self._counter(r)
            seen = self._last_seen.get(r)
            if seen is None or seen[0] != count:
                self._last_seen[r] = (count, now)
            elif count > 0 and now - seen[1] > self.timeout:
                return r, f"sent no heartbeat for {now - seen[1]:.1f} s (dead, stopped or cut off)"
        return None

    def diagnose(self) -> tuple[int | None, str]:
        """After a communication error: which rank broke the session, and how.

        Bounded in time: if the store does not answer, party 0 (its host) is named.
        """
        box: list[tuple[int | None, str]] = []
        worker = threading.Thread(target=lambda: box.append(self._diagnose()), daemon=True)
        worker.start()
        worker.join(timeout=min(self.timeout, 10.0) + 4 * TICK)
        if box:
            return box[0]
        if self.rank == 0:
            return None, ("the failing party could not be identified (the session store does "
                          "not answer)")
        return 0, "does not answer (its session store hangs: stopped or cut off)"

    def _diagnose(self) -> tuple[int | None, str]:
        try:
            for r in range(self.total):
                if r != self.rank:
                    err = self.peer_error(r)
                    if err is not None:
                        return r, f"failed: {err}"
            before = {r: self._counter(r) for r in range(self.total) if r != self.rank}
            time.sleep(3 * TICK + 0.2)
            for r in range(self.total):
                if r != self.rank:
                    err = self.peer_error(r)
                    if err is not None:
                        return r, f"failed: {err}"
            gone = {r: self._gone(r) for r in before}
            stale = [r for r, c in before.items() if self._counter(r) == c and gone[r] is None]
            if not stale:  # follow what the parties that already left said
                named = [int(g) for g in gone.values() if g and g.isdigit() and int(g) != self.rank]
                stale = named[:1]
        except Exception:
            if self.rank == 0:
                return None, "the session store is unusable"
            return 0, "is unreachable (its session store does not answer)"
        if stale:
            return stale[0], "stopped sending heartbeats (dead, stopped or cut off)"
        return self._stuck(list(before))

    def _stuck(self, others: list[int]) -> tuple[int | None, str]:
        """Every other process is alive: name one that is not where this one waits."""
        with self._lock:
            own = self._phase
        elsewhere = [r for r in others if self.peer_phase(r) != own]
        if elsewhere:
            return elsewhere[0], "is alive (it still sends heartbeats) but did not get here"
        return None, (f"every party is alive and in phase {own!r}, yet a message did not arrive "
                      "in time (a party computing for longer than the timeout, or the network)")


def proc_state(pid: int) -> str:
    """One-letter state from /proc (``T`` = stopped); ``?`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return "?"


def check_stopped(procs: list[Any], alive: dict[Any, int], since: dict[int, float],
                  deaths: dict[int, int], limit: float) -> None:
    """Backstop for a stopped (SIGSTOP) party that the others failed to report in time."""
    now = time.monotonic()
    for rank in list(alive.values()):
        if proc_state(procs[rank].pid) in ("T", "t"):
            if now - since.setdefault(rank, now) > limit:
                deaths[rank] = -signal.SIGSTOP
        else:
            since.pop(rank, None)
