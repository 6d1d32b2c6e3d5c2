"""Imported once by the forkserver that starts local party processes (see ``_launch``).

Importing torch and crypten here means every party forked from the server starts with them
already loaded (tens of milliseconds instead of seconds per process).
"""

from __future__ import annotations

import torch
import torch.distributed  # noqa: F401

import veil.mpc._party
import veil.mpc.session  # noqa: F401
from veil.mpc._compat import import_crypten

import_crypten()
