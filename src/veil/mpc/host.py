"""What a command-line entry point needs to run a party of a session on this host.

``veil party --manifest`` runs one member of a multi-host session over mutually authenticated
TLS (:func:`run_member`); the plaintext ``--master`` form runs one party (:func:`run_party`) or
the dealer (:func:`run_dealer`); :func:`exit_on_interrupt` and
:func:`print_failure_and_exit` make it stop at once on Ctrl-C or when another process
failed. Every ``veil`` command calls :func:`honour_sigint` first, so that an interrupt
reaches :func:`veil.mpc.run`, which then stops its parties. Importing this module does not
import torch or crypten.
"""

from __future__ import annotations

from veil.mpc._runtime.cluster import run_dealer, run_member, run_party
from veil.mpc._runtime.exits import exit_on_interrupt, print_failure_and_exit
from veil.mpc._runtime.launch import honour_sigint
from veil.mpc._runtime.party import parse_master

__all__ = ["run_party", "run_dealer", "run_member", "exit_on_interrupt", "print_failure_and_exit",
           "honour_sigint", "parse_master"]
