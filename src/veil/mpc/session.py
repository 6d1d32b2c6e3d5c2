"""The object a job receives: one party's view of a running MPC session.

A job is a module-level function ``job(party, *args)`` that runs once in every party's own
process (SPMD, as in CrypTen and torch.distributed)::

    def job(party):
        x = party.share(my_tensor if party.rank == 0 else None, src=0)
        y = party.share(None if party.rank != 1 else other, src=1)
        return party.reveal((x * y).sum(), to=[1])      # only party 1 learns the result

Every shared value is a CrypTen ``MPCTensor`` with CrypTen's full tensor API. Nothing is revealed
except through :meth:`Party.reveal` (or CrypTen's own ``get_plain_text``, which reveals to all).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from veil.errors import ConfigurationError
from veil.mpc import tensor as _tensor
from veil.mpc.logs import end_phase, logger_name, start_phase

__all__ = ["Party"]

_TOPIC = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _resolve_device(device: str, rank: int | None = None) -> Any:
    from veil.mpc.device import resolve

    return resolve(device, rank=rank)


class Party:
    """One party of a session; created by Veil inside each party process (never by users)."""

    def __init__(self, *, _state: Any, crypten: Any) -> None:
        self._state = _state
        self._crypten = crypten
        self.rank: int = _state.rank
        self.world_size: int = _state.config.world_size
        self.name: str = f"party{self.rank}"
        self.device = _resolve_device(_state.config.device, rank=_state.rank)
        self.precision_bits: int = _state.config.precision_bits
        #: This party's logger, ``veil.mpc.party<rank>`` (see :mod:`veil.mpc.logs`); records
        #: of local parties reach the driver's handlers when its logging is on.
        self.logger: logging.Logger = logging.getLogger(logger_name(self.rank, self.world_size))
        self._loggers: list[logging.Logger] = [self.logger]
        self.logger.info("job started on %s (party %d of %d)", self.device, self.rank,
                         self.world_size)

    def __repr__(self) -> str:
        return f"Party(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # -- data in and out -----------------------------------------------------------------------
    def share(self, tensor: Any, src: int = 0, *, shape: Sequence[int] | None = None) -> Any:
        """Secret-share ``tensor`` from party ``src``; other parties pass ``None``.

        Reveals to the other parties only the shape (sent by ``src`` unless ``shape=`` is given
        by every party). Returns a CrypTen ``MPCTensor``.
        """
        with self._phase(f"share from party {src}", logging.DEBUG):
            return _tensor.share(self, tensor, src=src, shape=shape)

    def reveal(self, x: Any, to: Sequence[int] | int | None = None) -> Any:
        """Open ``x`` to the parties in ``to`` (every party when ``None``).

        Returns a torch tensor on the recipients and ``None`` on every other party, which sends
        its share to each recipient and receives nothing.
        """
        label = "all" if to is None else str(sorted(set([to] if isinstance(to, int) else to)))
        with self._phase(f"reveal to {label}", logging.DEBUG):
            return _tensor.reveal(self, x, to=to)

    # -- bookkeeping ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str, *, topic: str | None = None) -> Iterator[None]:
        """Name what the session is doing; a :class:`PartyFailure` inside reports this name.

        With logging on (:mod:`veil.mpc.logs`), the start is logged at DEBUG and the end at
        INFO: seconds, bytes sent and received and rounds this party spent in the phase.
        ``topic`` logs it (and the phases nested in it, unless they name their own) under
        ``veil.mpc.party<rank>.<topic>``; by default a phase uses its enclosing phase's logger.
        Phase names are shown to the other parties and logged: never put data values in them.
        """
        with self._phase(name, logging.INFO, topic):
            yield

    @contextlib.contextmanager
    def _phase(self, name: str, level: int, topic: str | None = None) -> Iterator[None]:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(f"phase name must be a non-empty str of ≤ 200 chars, "
                                     f"got {name!r}")
        if topic is not None and (not isinstance(topic, str) or not _TOPIC.fullmatch(topic)):
            raise ConfigurationError(f"a phase topic is a dotted name like 'stats', got {topic!r}")
        state = self._state
        phases = state.phases
        logger = self.logger.getChild(topic) if topic else self._loggers[-1]
        self._loggers.append(logger)
        phases.append(name)
        state.set_phase(name)
        timer = start_phase(logger, name, level=level, depth=len(self._loggers) - 1)
        try:
            yield
        except BaseException as exc:
            if state.error_phase is None or state.error_phase[0] is not exc:
                state.error_phase = (exc, state.phase)  # innermost phase where it happened
            end_phase(timer, exc)
            raise
        else:
            end_phase(timer)
        finally:
            phases.pop()
            self._loggers.pop()
            if phases:
                state.set_phase(phases[-1])

    def comm_stats(self) -> dict[str, Any]:
        """This party's traffic so far: ``bytes_sent``, ``bytes_received``, ``rounds``, ..."""
        from veil.mpc import accounting

        return dict(accounting.stats())

    @property
    def crypten(self) -> Any:
        """The ``crypten`` module of this process, for APIs Veil does not wrap."""
        return self._crypten
