"""Logs of MPC sessions: one logger per party, timed phases, forwarding from local parties.

Veil only *emits* standard-library :mod:`logging` records; it configures no handler (except
:func:`log_to_stderr`, on request), so nothing is printed unless the application asks for it.

Logger names:

* ``veil.mpc.party<r>`` for party ``r`` (``party.logger`` inside a job), with children for
  higher layers, e.g. ``veil.mpc.party0.stats`` for the joint-statistics job;
* ``veil.mpc.dealer`` for the dealer process;
* ``veil.mpc.driver`` for :func:`veil.mpc.run` in the calling process.

INFO: each process's milestones (started, session connected, job finished, with time, bytes and
rounds) and the end of every phase a job names with ``party.phase(...)``::

    phase 'share inputs' done in 0.12 s: 48,000 B sent, 48,000 B received, 3 rounds

(the deltas of this party's :mod:`veil.mpc.accounting` counters over the phase). DEBUG: the
start of every phase, and the phases Veil opens itself in ``party.share`` / ``party.reveal``.
Phase records also carry :data:`PHASE_FIELD`, read with :func:`phase_event`.

Local sessions: when :func:`veil.mpc.run` starts and the driver's ``veil`` loggers are enabled
for INFO or DEBUG, every party process gets the same levels and sends each of its ``veil.*``
records to the driver over its result pipe as one JSON object (logger name, level, the formatted
message, creation time, and for phase records the phase fields): plain data, never a pickle.
The driver re-emits them under the same logger names as they arrive, so its handlers (or
``caplog``) see ``veil.mpc.party1`` records in real time. With logging off (the default) the
parties install nothing and send nothing. Multi-host parties (``veil party``) log in their
own process.

No record holds data values: messages name phases, ranks, times, byte and round counts, and
exception *classes* (never exception messages, which can hold values).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from veil.errors import ConfigurationError
from veil.mpc import accounting

__all__ = ["ROOT", "DRIVER", "PHASE_FIELD", "logger_name", "log_to_stderr", "PhaseEvent",
           "phase_event", "PhaseTimer", "start_phase", "end_phase", "traffic", "milestone",
           "child_levels", "forward_records", "is_record_frame", "reemit", "phase_listener"]

ROOT = "veil"
DRIVER = "veil.mpc.driver"
PHASE_FIELD = "veil_phase"  # LogRecord attribute of phase records: a dict of plain values
DEFAULT_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
_NAME = re.compile(r"veil(\.[A-Za-z0-9_-]+)*")
_MAX_MESSAGE = 32_000
_LISTENERS: list[Callable[[PhaseEvent, float], None]] = []  # see phase_listener


def logger_name(rank: int, world_size: int, topic: str | None = None) -> str:
    """``veil.mpc.party<rank>`` (``veil.mpc.dealer`` for ``rank == world_size``), with
    ``.<topic>`` appended when given."""
    base = "veil.mpc.dealer" if rank == world_size else f"veil.mpc.party{rank}"
    return f"{base}.{topic}" if topic else base


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`log_to_stderr` installs (replaced by its next call)."""


def log_to_stderr(level: int | str = "INFO", *, stream: IO[str] | None = None,
                  fmt: str = DEFAULT_FORMAT) -> logging.Handler:
    """Print Veil's records at ``level`` and above to ``stderr`` (or ``stream``).

    Sets the ``veil`` logger's level and adds one stream handler to it (replacing the one an
    earlier call, or ``veil -v``, added); returns that handler; records below ``level`` that
    reach it are not printed. Local parties of :func:`veil.mpc.run` follow the
    driver's level, so their phase records appear here too. Equivalent, for a whole
    application: ``logging.basicConfig(level=logging.INFO)`` (use one of the two, not both:
    records would be printed twice).
    """
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ConfigurationError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, "
                                     "ERROR or CRITICAL")
        level = number
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


# -- phases -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseEvent:
    """What a phase record says: ``event`` is ``"start"``, ``"done"`` or ``"failed"``;
    ``depth`` 1 for a phase directly in the job; traffic and ``seconds`` are ``0`` at the start.
    ``member`` is ``"party<r>"`` or ``"dealer"``."""

    event: str
    name: str
    member: str
    depth: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    rounds: int


def phase_event(record: logging.LogRecord) -> PhaseEvent | None:
    """The :class:`PhaseEvent` of a phase record (local or forwarded), ``None`` for others."""
    return _event(getattr(record, PHASE_FIELD, None))


def _event(info: Any) -> PhaseEvent | None:
    """The :class:`PhaseEvent` of a record's phase fields, ``None`` if they are malformed."""
    if not isinstance(info, dict):
        return None
    try:
        return PhaseEvent(event=str(info["event"]), name=str(info["name"]),
                          member=str(info["member"]), depth=int(info["depth"]),
                          seconds=float(info["seconds"]), bytes_sent=int(info["bytes_sent"]),
                          bytes_received=int(info["bytes_received"]),
                          rounds=int(info["rounds"]))
    except (KeyError, TypeError, ValueError):
        return None


def traffic(sent: int, received: int, rounds: int) -> str:
    """``"48,000 B sent, 48,000 B received, 3 rounds"``."""
    return (f"{sent:,} B sent, {received:,} B received, {rounds:,} "
            f"round{'' if rounds == 1 else 's'}")


class PhaseTimer:
    """A phase in progress whose end will be logged (see :func:`start_phase`)."""

    __slots__ = ("logger", "name", "level", "depth", "member", "start", "counters")

    def __init__(self, logger: logging.Logger, name: str, level: int, depth: int) -> None:
        self.logger, self.name, self.level, self.depth = logger, name, level, depth
        parts = logger.name.split(".")
        self.member = parts[2] if len(parts) > 2 else logger.name
        self.counters = accounting.totals()
        self.start = time.perf_counter()

    def fields(self, event: str, seconds: float = 0.0,
               counts: tuple[int, int, int] = (0, 0, 0)) -> dict[str, Any]:
        return {PHASE_FIELD: {
            "event": event, "name": self.name, "member": self.member, "depth": self.depth,
            "seconds": round(seconds, 6), "bytes_sent": counts[0], "bytes_received": counts[1],
            "rounds": counts[2]}}


def start_phase(logger: logging.Logger, name: str, *, level: int = logging.INFO,
                depth: int = 1) -> PhaseTimer | None:
    """Start timing phase ``name`` if ``logger`` will log its end at ``level``; logs the start
    at DEBUG. ``None`` (nothing measured, nothing logged) when the logger is off."""
    if not logger.isEnabledFor(level):
        return None
    timer = PhaseTimer(logger, name, level, depth)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("phase %r started", name, extra=timer.fields("start"))
    return timer


def end_phase(timer: PhaseTimer | None, error: BaseException | None = None) -> None:
    """Log the end of the phase: seconds, bytes sent and received, rounds spent in it; on
    ``error`` only its class name (a message could hold data values)."""
    if timer is None:
        return
    seconds = time.perf_counter() - timer.start
    now = accounting.totals()
    counts = (max(0, now[0] - timer.counters[0]), max(0, now[1] - timer.counters[1]),
              max(0, now[2] - timer.counters[2]))
    if error is None:
        timer.logger.log(timer.level, "phase %r done in %.2f s: %s", timer.name, seconds,
                         traffic(*counts), extra=timer.fields("done", seconds, counts))
    else:
        timer.logger.log(timer.level, "phase %r failed after %.2f s (%s): %s", timer.name,
                         seconds, type(error).__name__, traffic(*counts),
                         extra=timer.fields("failed", seconds, counts))


def milestone(logger: logging.Logger, what: str, since: float | None = None, *,
              counts: bool = False) -> None:
    """One INFO line of a process's life: ``what`` [``in X s``] [``: traffic so far``].
    ``since`` is a :func:`time.perf_counter` value."""
    if not logger.isEnabledFor(logging.INFO):
        return
    text = what if since is None else f"{what} in {time.perf_counter() - since:.2f} s"
    if counts:
        text = f"{text}: {traffic(*accounting.totals())}"
    logger.info("%s", text)


# -- forwarding from local party processes ------------------------------------------------------
def child_levels() -> dict[str, int] | None:
    """In the driver: the levels local parties should log at, or ``None`` (logging off).

    ``{"veil": effective level of the veil logger, <veil.* logger>: its own level, ...}``;
    ``None`` unless one of them is INFO or lower. Levels that :func:`logging.disable` turns
    off here are raised above it (the parties would send records the driver then drops).
    While a :func:`phase_listener` is active, ``veil.mpc`` is DEBUG in the parties whatever
    this process's levels: they send every phase record, and :func:`reemit` hands them to the
    listeners (and logs only those this process's loggers are enabled for).
    """
    levels = {ROOT: logging.getLogger(ROOT).getEffectiveLevel()}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name.startswith(ROOT + ".") and isinstance(logger, logging.Logger)
                and logger.level != logging.NOTSET):
            levels[name] = logger.level
    disabled = logging.root.manager.disable
    listening = {"veil.mpc": logging.DEBUG} if _LISTENERS else {}
    if disabled >= logging.INFO or min(levels.values()) > logging.INFO:
        return {**levels, **listening} if listening else None
    return {name: max(level, disabled + 1) if disabled else level
            for name, level in levels.items()} | listening


@contextlib.contextmanager
def phase_listener(callback: Callable[[PhaseEvent, float], None]) -> Iterator[None]:
    """While the block runs, ``callback(event, created)`` gets every phase event that local
    parties of :func:`veil.mpc.run` report (starts included; ``created`` is the record's
    :func:`time.time` stamp), independently of the logging configuration, which it leaves
    as it is (nothing more is printed). Callbacks run on the driver's session thread."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


class _Forwarder(logging.Handler):
    """In a party process: each ``veil.*`` record to the driver, as one JSON object."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            frame: dict[str, Any] = {"name": record.name, "level": record.levelno,
                                     "msg": message[:_MAX_MESSAGE], "created": record.created}
            info = getattr(record, PHASE_FIELD, None)
            if isinstance(info, dict):
                frame["phase"] = info
            data = json.dumps(frame, default=str).encode()
        except Exception:
            self.handleError(record)
            return
        with contextlib.suppress(OSError, ValueError):  # the driver is gone: nobody to tell
            self._send(data)


def forward_records(send: Callable[[bytes], None], levels: dict[str, int]) -> None:
    """In a local party process: log at the driver's ``levels`` and hand every ``veil.*``
    record to ``send`` (as JSON bytes, see :func:`is_record_frame`) instead of this process's
    own handlers."""
    for name, level in levels.items():
        if isinstance(name, str) and _NAME.fullmatch(name) and isinstance(level, int):
            logging.getLogger(name).setLevel(level)
    root = logging.getLogger(ROOT)
    root.addHandler(_Forwarder(send))
    root.propagate = False


def is_record_frame(data: bytes) -> bool:
    """Whether a message on a party's result pipe is a log record (JSON) rather than a
    report (a pickle, which never starts with ``{``)."""
    return data[:1] == b"{"


def reemit(data: bytes, *, process: str, pid: int | None = None) -> None:
    """In the driver: log a record a party forwarded, under its own logger name, if that
    logger is enabled for its level. Malformed frames are dropped."""
    try:
        frame = json.loads(data)
        name, level = str(frame["name"]), int(frame["level"])
        message, created = str(frame["msg"]), float(frame["created"])
    except (ValueError, KeyError, TypeError):
        return
    if len(name) > 200 or not _NAME.fullmatch(name):
        return
    info = frame.get("phase")
    event = _event(info) if _LISTENERS else None
    for listener in list(_LISTENERS) if event is not None else ():
        with contextlib.suppress(Exception):  # a failing listener must not break the session
            listener(event, created)
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    extra = {PHASE_FIELD: info} if isinstance(info, dict) else None
    record = logger.makeRecord(name, level, "(party process)", 0, message, None, None,
                               extra=extra)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.processName = process
    record.process = pid
    with contextlib.suppress(Exception):  # a failing handler must not break the session
        logger.handle(record)
