"""Long-term client identities for secure aggregation against a malicious server.

Bonawitz et al. (CCS 2017, malicious-server variant) assume a PKI: every client holds a
long-term signing key and every client knows every other client's verification key *out of
band* (from its own configuration, not from the server). Veil uses Ed25519 (``cryptography``):

* round 0: a client signs its fresh X25519 keys (bound to the round id and its client id), so the
  server can neither substitute keys (no man-in-the-middle of the share encryption) nor invent
  clients that no identity vouches for;
* round 3 (consistency check): a client signs the survivor list U3 it was shown, bound to the
  round and to the roster it saw; before it reveals any share it checks that at least ``t``
  distinct clients signed the *same* list.

An :class:`IdentityDirectory` maps client ids to raw 32-byte Ed25519 public keys.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["IdentityDirectory", "SIGNATURE_BYTES", "generate_identities"]

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class IdentityDirectory:
    """Client id -> raw Ed25519 verification key, given to every client by its configuration."""

    keys: Mapping[int, bytes]

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for cid, pk in keys.items():
            if not isinstance(cid, int) or cid < 0:
                raise ConfigurationError(f"identity directory ids must be ints >= 0, got {cid!r}")
            if not isinstance(pk, bytes) or len(pk) != PUBLIC_KEY_BYTES:
                raise ConfigurationError(f"identity key of client {cid} must be 32 raw bytes "
                                         "(Ed25519PublicKey.public_bytes_raw())")
        if len(set(keys.values())) != len(keys):
            raise ConfigurationError("identity directory repeats a public key; each client "
                                     "needs its own identity")
        object.__setattr__(self, "keys", keys)

    def __contains__(self, cid: object) -> bool:
        return cid in self.keys

    def subset(self, ids: Sequence[int]) -> IdentityDirectory:
        """The directory re-indexed by position: entry ``i`` is the key of ``ids[i]``."""
        missing = [c for c in ids if c not in self.keys]
        if missing:
            raise ConfigurationError(f"clients {missing[:8]} have no identity key")
        return IdentityDirectory({i: self.keys[c] for i, c in enumerate(ids)})

    def verify(self, cid: int, signature: bytes, message: bytes) -> bool:
        """True iff ``signature`` is ``cid``'s valid Ed25519 signature of ``message``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        pk = self.keys.get(cid)
        if pk is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def generate_identities(ids: Iterable[int]) -> tuple[dict[int, Any], IdentityDirectory]:
    """Fresh Ed25519 identity keys for ``ids`` and their public directory (for simulations and
    tests; in a deployment each client generates its own key and the directory is distributed
    out of band)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = {c: Ed25519PrivateKey.generate() for c in ids}
    return private, IdentityDirectory({c: k.public_key().public_bytes_raw()
                                       for c, k in private.items()})


def check_identity_key(key: Any, directory: IdentityDirectory, client_id: int) -> None:
    """The client's private identity key must match its own directory entry."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("identity_key must be an Ed25519PrivateKey (cryptography); "
                                 f"got {type(key).__name__}")
    if directory.keys.get(client_id) != key.public_key().public_bytes_raw():
        raise ConfigurationError(f"identity_key of client {client_id} does not match its entry "
                                 "in the identity directory")


def advertise_payload(params_hash: bytes, round_id: bytes, client_id: int, enc: bytes,
                      mask: bytes) -> bytes:
    """What a client signs in round 0: its fresh keys, bound to round, client and parameters."""
    return (b"veil-secagg-advertise/1\0" + params_hash + round_id + _U32.pack(client_id)
            + enc + mask)


def roster_digest(entries: Iterable[tuple[int, bytes, bytes, bytes]]) -> bytes:
    """SHA-256 of the roster (ids, keys and advertise signatures) a client accepted."""
    h = hashlib.sha256(b"veil-secagg-roster/1\0")
    for cid, enc, mask, sig in entries:
        h.update(_U32.pack(cid) + enc + mask + sig)
    return h.digest()


def consistency_payload(params_hash: bytes, round_id: bytes, roster: bytes,
                        survivors: Sequence[int]) -> bytes:
    """What a client signs in round 3: the survivor list U3, bound to round, parameters and the
    roster digest (fresh keys: a signature from another round never verifies here)."""
    return (b"veil-secagg-consistency/1\0" + params_hash + round_id + roster
            + _U32.pack(len(survivors)) + b"".join(_U32.pack(c) for c in survivors))
