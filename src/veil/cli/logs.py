"""``veil -v``: Veil's standard-library log records on stderr, and the phase spinner.

Off by default. ``-v`` shows INFO records (each MPC party's phases with their time, bytes and
rounds, session milestones); ``-vv`` adds DEBUG records. Logger names say who speaks:
``veil.mpc.party0.stats`` is party 0 of a local run (its records are forwarded to this
process), ``veil.mpc.dealer`` the dealer.

:func:`phase_progress` shows, on an interactive stderr, one spinner line with the phase each
party of a local MPC session is in (``party0: stats linear (3.2 s)``). It listens to the
parties' phase events with :func:`veil.mpc.logs.phase_listener` (they are sent even without
``-v``), which leaves the logging configuration as it is: nothing new is printed.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from veil.mpc.logs import PhaseEvent

__all__ = ["configure", "phase_progress", "PhaseBoard", "LOG_FORMAT", "MPC_LOGGER"]

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
MPC_LOGGER = "veil.mpc"
_MAX_SHOWN = 3  # phases named on the spinner line; the others are counted


def configure(verbosity: int) -> None:
    """Send ``veil.*`` records to stderr: ``verbosity`` 1 -> INFO, 2 or more -> DEBUG, 0 ->
    leave logging as it is (off).

    Uses :func:`veil.mpc.log_to_stderr`, so a later call of either replaces the handler
    instead of adding a second one (which would print every record twice).
    """
    if verbosity <= 0:
        return
    from veil.mpc.logs import log_to_stderr

    log_to_stderr(logging.INFO if verbosity == 1 else logging.DEBUG, fmt=LOG_FORMAT)


# -- the phase spinner -------------------------------------------------------------------------
def _member_key(member: str) -> tuple[int, int, str]:
    """``party2`` before ``party10``, the dealer last."""
    digits = member.removeprefix("party")
    if member.startswith("party") and digits.isdigit():
        return (0, int(digits), member)
    return (1, 0, member)


class PhaseBoard:
    """What each party is doing, from its phase records: the text of the spinner line.

    Thread-safe: records arrive on the thread running the session, the spinner reads the text
    from its refresh thread.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._open: dict[str, list[tuple[str, float]]] = {}  # member -> (phase, start time)
        #: ``(member, phase, event)`` of the last 1000 phase ends ("done" or "failed"), in order
        self.ended: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=1000)
        self._last: str | None = None
        self._lock = threading.Lock()

    def update(self, event: PhaseEvent, created: float) -> None:
        """Take one phase event; ``created`` is the record's :func:`time.time` stamp."""
        with self._lock:
            stack = self._open.setdefault(event.member, [])
            if event.event == "start":
                stack.append((event.name, created))
                return
            for i in range(len(stack) - 1, -1, -1):
                if stack[i][0] == event.name:
                    del stack[i:]  # and any inner phase whose end was not seen
                    break
            self.ended.append((event.member, event.name, event.event))
            if event.depth <= 1:
                self._last = f"{event.member}: {event.name} {event.event} in {event.seconds:.1f} s"

    def text(self, now: float | None = None) -> str:
        """``"<title>: parties 0, 1: stats linear (3.2 s)"``: the outermost open phase of the
        busy parties, grouped by phase, with the time spent in it so far (since the first of
        them entered it); the last finished phase when none is open."""
        now = time.time() if now is None else now
        with self._lock:
            groups: dict[str, tuple[list[str], float]] = {}
            for member in sorted((m for m, s in self._open.items() if s), key=_member_key):
                name, since = self._open[member][0]
                members, first = groups.get(name, ([], since))
                groups[name] = ([*members, member], min(first, since))
            parts = [f"{_members(members)}: {name} ({max(0.0, now - first):.1f} s)"
                     for name, (members, first) in list(groups.items())[:_MAX_SHOWN]]
            if len(groups) > _MAX_SHOWN:
                parts.append(f"+{len(groups) - _MAX_SHOWN} more")
            status = " · ".join(parts) or self._last or "starting the parties"
        return f"{self.title}: {status}"


def _members(members: list[str]) -> str:
    """``party0``; ``parties 0, 1, 2``; ``parties 0, 1 and the dealer``."""
    ranks = [m.removeprefix("party") for m in members if _member_key(m)[0] == 0]
    others = [m for m in members if _member_key(m)[0] != 0]
    if len(members) == 1:
        return members[0]
    named = ([f"part{'ies' if len(ranks) > 1 else 'y'} {', '.join(ranks)}"] if ranks else [])
    return " and the ".join(named + others) if named else ", ".join(others)


class _ConsoleLines(io.TextIOBase):
    """A text stream that prints each complete line through a rich console (above its live
    display), unwrapped and without markup."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console, self._partial = console, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from rich.text import Text

        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._console.print(Text(line), soft_wrap=True, highlight=False)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")


def _route_through(console: Console) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Make the stream handlers of ``veil.mpc`` and its ancestors that write to the console's
    file write through the console, so that ``-v`` lines appear above the spinner instead of
    through it; returns what to restore."""
    target, swapped = console.file, []
    logger: logging.Logger | None = logging.getLogger(MPC_LOGGER)
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is target:
                swapped.append((handler, handler.setStream(_ConsoleLines(console))))
        logger = logger.parent
    return swapped


@contextlib.contextmanager
def phase_progress(console: Console, title: str, enabled: bool = True
                   ) -> Iterator[PhaseBoard | None]:
    """While the block runs, a spinner line on ``console`` (a stderr console) with the phase
    each party of a local MPC session reports, e.g. ``"<title>: party0: stats linear (3.2 s)"``.

    A no-op (yields ``None``) when ``enabled`` is false or the console is not an interactive
    terminal; otherwise yields the :class:`PhaseBoard`. Prints nothing but the transient
    spinner (erased on exit): records are shown only as the logging configuration (``-v``)
    says, above the spinner. Writes nothing to stdout.
    """
    if not enabled or not console.is_terminal or console.is_dumb_terminal:
        yield None
        return
    from rich.live import Live
    from rich.spinner import Spinner
    from rich.text import Text

    from veil.mpc.logs import phase_listener

    board = PhaseBoard(title)
    spinner = Spinner("dots", style="cyan")

    def render() -> RenderableType:  # one line, cut to the terminal's width
        spinner.update(text=Text(board.text()))  # never markup: phase names are plain
        line = spinner.render(console.get_time())
        if isinstance(line, Text):
            line.no_wrap, line.overflow = True, "ellipsis"
        return line

    with phase_listener(board.update), Live(get_renderable=render, console=console, transient=True,
                                 refresh_per_second=10, redirect_stdout=False,
                                 redirect_stderr=False):
        swapped = _route_through(console)
        try:
            yield board
        finally:
            for handler, stream in swapped:
                handler.setStream(stream)
