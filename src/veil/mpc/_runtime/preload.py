"""Imported once by the forkserver that starts local party processes (see ``_launch``).

Importing torch, crypten and the modules every party needs here means every party forked from the
server starts with them already loaded (tens of milliseconds instead of seconds per process).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import torch.distributed  # noqa: F401

from veil.mpc._crypten import import_crypten

import_crypten()
for _name in ("veil.mpc._runtime.party", "veil.mpc._runtime.launch", "veil.mpc._runtime.jobs",
              "veil.mpc.session", "veil.mpc.tensor", "veil.mpc._crypten.messages",
              "veil.mpc._crypten.rng", "veil.mpc.accounting", "veil.mpc.device",
              "psutil", "cryptography.hazmat.primitives.ciphers"):
    with contextlib.suppress(ImportError):  # optional parts; the party imports what it needs
        importlib.import_module(_name)
