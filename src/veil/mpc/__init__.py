"""Secret-shared computation on CrypTen: sessions of parties, sharing, revealing.

``from veil import mpc`` is cheap: torch and crypten are imported when a session starts.

    from veil import mpc

    def job(party):                      # a module-level function; runs once in every party
        x = party.share(data if party.rank == 0 else None, src=0)
        return party.reveal(x.relu().sum(), to=[0])

    mpc.run(job, parties=3)              # -> [value, None, None]

Trust model (details in docs/security/mpc.md): semi-honest parties; with the default
``provider="dealer"`` a separate dealer process holding no inputs supplies the Beaver triples.

Every change Veil makes to CrypTen, torch and the standard library (CSPRNG, pickle-free
messages, accounting, the decoder fix) is one ordered table, ``veil.mpc._crypten.PATCHES``,
applied once per party process by ``veil.mpc._crypten.install``. ``import_crypten()`` returns
CrypTen as Veil patches it at import (for benchmarks against raw CrypTen);
:mod:`veil.mpc.host` holds what ``veil party`` needs, :mod:`veil.mpc.accounting` the traffic
counters, :mod:`veil.mpc.logs` the loggers (``veil.mpc.party<r>``, ``veil.mpc.dealer``,
``veil.mpc.driver``; off unless the application enables them, e.g. :func:`log_to_stderr`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from veil.errors import PartyFailure

__all__ = [
    "run",
    "preload",
    "run_party",
    "run_dealer",
    "Party",
    "PartyFailure",
    "PROVIDERS",
    "cat",
    "stack",
    "where",
    "is_shared",
    "import_crypten",
    "log_to_stderr",
    "phase_event",
    "PhaseEvent",
]

_LAZY = {
    "run": ("veil.mpc._runtime.launch", "run"),
    "preload": ("veil.mpc._runtime.launch", "preload"),
    "run_party": ("veil.mpc._runtime.cluster", "run_party"),
    "run_dealer": ("veil.mpc._runtime.cluster", "run_dealer"),
    "Party": ("veil.mpc.session", "Party"),
    "PROVIDERS": ("veil.mpc.providers", "PROVIDERS"),
    "cat": ("veil.mpc.tensor", "cat"),
    "stack": ("veil.mpc.tensor", "stack"),
    "where": ("veil.mpc.tensor", "where"),
    "is_shared": ("veil.mpc.tensor", "is_shared"),
    "import_crypten": ("veil.mpc._crypten", "import_crypten"),
    "log_to_stderr": ("veil.mpc.logs", "log_to_stderr"),
    "phase_event": ("veil.mpc.logs", "phase_event"),
    "PhaseEvent": ("veil.mpc.logs", "PhaseEvent"),
}

# A library emits records and configures nothing: without this handler, Python's last-resort
# handler would print veil.mpc warnings to stderr in applications that never set up logging.
logging.getLogger("veil.mpc").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veil.mpc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
