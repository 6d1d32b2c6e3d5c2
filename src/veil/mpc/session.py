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
from collections.abc import Iterator, Sequence
from typing import Any

from veil.errors import ConfigurationError
from veil.mpc import tensor as _tensor

__all__ = ["Party"]


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

    def __repr__(self) -> str:
        return f"Party(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # -- data in and out -----------------------------------------------------------------------
    def share(self, tensor: Any, src: int = 0, *, shape: Sequence[int] | None = None) -> Any:
        """Secret-share ``tensor`` from party ``src``; other parties pass ``None``.

        Reveals to the other parties only the shape (sent by ``src`` unless ``shape=`` is given
        by every party). Returns a CrypTen ``MPCTensor``.
        """
        with self.phase(f"share from party {src}"):
            return _tensor.share(self, tensor, src=src, shape=shape)

    def reveal(self, x: Any, to: Sequence[int] | int | None = None) -> Any:
        """Open ``x`` to the parties in ``to`` (every party when ``None``).

        Returns a torch tensor on the recipients and ``None`` on every other party, which sends
        its share to each recipient and receives nothing.
        """
        label = "all" if to is None else str(sorted(set([to] if isinstance(to, int) else to)))
        with self.phase(f"reveal to {label}"):
            return _tensor.reveal(self, x, to=to)

    # -- bookkeeping ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Name what the session is doing; a :class:`PartyFailure` inside reports this name."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(f"phase name must be a non-empty str of ≤ 200 chars, "
                                     f"got {name!r}")
        state = self._state
        phases = state.phases
        phases.append(name)
        state.set_phase(name)
        try:
            yield
        except BaseException as exc:
            if state.error_phase is None or state.error_phase[0] is not exc:
                state.error_phase = (exc, state.phase)  # innermost phase where it happened
            raise
        finally:
            phases.pop()
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
