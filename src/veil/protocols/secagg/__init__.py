"""Secure aggregation with dropouts (Bonawitz et al., CCS 2017), malicious-server variant.

Modules: ``client`` (:class:`SecAggClient`), ``server`` (:class:`SecAggServer`, and
:func:`drive_round`, which runs a round through it in phase order), ``messages``
(wire formats), ``identity`` (Ed25519 identities, signed payloads), ``common`` (configuration,
result, key agreement and mask helpers shared by client and server), ``quant`` (fixed-point
quantization onto the ring).
"""

from veil.protocols.secagg.client import SecAggClient
from veil.protocols.secagg.common import PHASES, SecAggConfig, SecAggResult
from veil.protocols.secagg.identity import IdentityDirectory, generate_identities
from veil.protocols.secagg.server import SecAggServer, drive_round

__all__ = ["PHASES", "SecAggConfig", "SecAggClient", "SecAggServer", "SecAggResult",
           "IdentityDirectory", "generate_identities", "drive_round"]
