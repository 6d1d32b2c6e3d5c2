"""Secure aggregation with dropouts (Bonawitz et al., CCS 2017), malicious-server variant.

Modules: ``client`` (:class:`SecAggClient`), ``server`` (:class:`SecAggServer`), ``messages``
(wire formats), ``identity`` (Ed25519 identities, signed payloads), ``common`` (key agreement,
masks, configuration), ``quant`` (fixed-point quantization onto the ring).
"""

from veil.protocols.secagg.client import (
    PHASES,
    IdentityDirectory,
    SecAggClient,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
    generate_identities,
)

__all__ = ["PHASES", "SecAggConfig", "SecAggClient", "SecAggServer", "SecAggResult",
           "IdentityDirectory", "generate_identities"]
