"""Ending a ``veil party`` process at once: on Ctrl-C, and when another party failed."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from veil.errors import PartyFailure
from veil.mpc._runtime.party import LINGER

__all__ = ["exit_on_interrupt", "print_failure_and_exit"]


def exit_on_interrupt(code: int = 130) -> None:
    """``veil party``: Ctrl-C (SIGINT) ends this process at once with ``code``.

    The main thread spends most of a session inside torch.distributed's C++ code (rendezvous,
    gloo operations), where a Python signal handler would only run once that call returns, up
    to the rendezvous timeout later. The C-level handler writes to a wake-up pipe instead, and a
    daemon thread reads it, prints one line and exits. Children (``--host-dealer``) die with
    this process (``PR_SET_PDEATHSIG``). Only from the main thread; otherwise a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        with contextlib.suppress(OSError):
            os.read(read_fd, 1)
        with contextlib.suppress(Exception):
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
        os._exit(code)

    signal.signal(signal.SIGINT, lambda *_: None)  # the wake-up pipe needs a Python handler
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=watch, name="veil-party-interrupt", daemon=True).start()


def print_failure_and_exit(failure: PartyFailure, *, hosts_store: bool = False) -> None:
    """Fail-fast handler for ``veil party``: report on stderr and end the process now.

    Party 0 (``hosts_store``) first keeps the session store up for :data:`LINGER` seconds so
    that the others can still read who failed.
    """
    sys.stderr.write(f"error: PartyFailure: {failure}\n")
    sys.stderr.flush()
    if hosts_store:
        time.sleep(LINGER)
    os._exit(1)
