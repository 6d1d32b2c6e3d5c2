"""How the processes of a session reach each other: the transport, the store, the identities.

A :class:`Wiring` is fixed before any process starts and travels to each one (local sessions:
inside the launcher's pickled arguments, i.e. a private pipe; ``veil party``: built from the
manifest in the party's own process). Three kinds:

``"local"`` (``veil.mpc.run``'s default)
    Unix sockets and the ``FileStore`` in the session's private directory (0700, random name).
``"tls"``
    TCP with mutually authenticated TLS 1.3, each member pinned to its certificate. From a
    manifest (multi-host: party 0 serves the session store over the same TLS listener), or
    for a local session with ephemeral identities the launcher makes (``transport="tls"``;
    listeners on 127.0.0.1, ports published in the private ``FileStore``).
``"gloo"``
    torch's gloo over plaintext TCP on loopback (local sessions only, named as insecure): any
    process on this machine can connect to its ports. Kept to compare against (benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from veil.errors import ConfigurationError
from veil.mpc._runtime.mesh import STORE, Endpoint, Mesh, TlsPolicy, listen, open_stream
from veil.mpc._runtime.netstore import LocalStore, NetStore, StoreServer

__all__ = ["Wiring", "Links", "TRANSPORTS", "local_wiring", "tls_local_wiring",
           "manifest_wiring", "open_links"]

TRANSPORTS = ("local", "tls", "gloo")


@dataclass(frozen=True)
class Wiring:
    """Everything one process needs to join the others (see the module docstring)."""

    kind: str
    endpoints: tuple[Endpoint, ...] = ()
    digest: bytes = b""
    trust_pem: bytes = b""
    # This process's identity: (certificate PEM, PKCS8 DER key). Ephemeral local identities
    # travel through the launcher's pipe; manifest parties load theirs from the sealed file.
    identities: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    bind: tuple[str, int] | None = None  # where to listen, if not our endpoint's address
    publish_ports: bool = False  # local TLS: ports are chosen at bind time and published

    @property
    def secure(self) -> bool:
        return self.kind in ("local", "tls")


def local_wiring(store_dir: str, total: int) -> Wiring:
    eps = tuple(Endpoint(r, os.path.join(store_dir, f"m{r}.sock")) for r in range(total))
    return Wiring("local", eps, digest=secrets.token_bytes(32))


def tls_local_wiring(total: int, world_size: int) -> Wiring:
    """Ephemeral identities for a local session over TLS (one per process)."""
    from veil.mpc._runtime.monitor import rank_label
    from veil.trust.identity import Identity

    ids = {r: Identity.ephemeral(f"local-{r}") for r in range(total)}
    eps = tuple(Endpoint(r, ("127.0.0.1", 0), ids[r].fingerprint, rank_label(r, world_size))
                for r in range(total))
    return Wiring("tls", eps, digest=secrets.token_bytes(32),
                  trust_pem=b"".join(i.certificate_pem for i in ids.values()),
                  identities={r: _export(i) for r, i in ids.items()}, publish_ports=True)


def manifest_wiring(manifest: Any, identity: Any, *, bind: tuple[str, int] | None = None
                    ) -> Wiring:
    """The wiring of manifest member ``identity`` (whose fingerprint must be listed)."""
    me = manifest.by_fingerprint(identity.fingerprint)
    if me is None:
        raise ConfigurationError(
            f"identity {identity.name!r} ({identity.fingerprint}) is not in the manifest "
            f"{manifest.source or ''}; add it, or use the identity the manifest lists")
    eps = tuple(Endpoint(m.rank, (m.host, m.port), m.fingerprint,
                         f"{'the dealer' if m.is_dealer else 'party ' + str(m.rank)} "
                         f"({m.name})") for m in manifest.members)
    digest = bytes.fromhex(manifest.digest().split(":", 1)[1])
    return Wiring("tls", eps, digest=digest, trust_pem=manifest.trust_pem(),
                  identities={me.rank: _export(identity)}, bind=bind)


def _export(identity: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    der = identity.private_key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
    return identity.certificate_pem, der


def _tls_policy(wiring: Wiring, rank: int, workdir: str) -> TlsPolicy:
    from cryptography.hazmat.primitives import serialization

    from veil.trust.identity import Identity, tls_files
    from veil.trust.tls import mutual_context

    cert_pem, der = wiring.identities[rank]
    key = serialization.load_der_private_key(der, password=None)
    ident = Identity(name=f"rank-{rank}", certificate_pem=cert_pem, private_key=key)
    cert_path, key_path, password = tls_files(ident, workdir)
    kw = dict(cert_path=cert_path, key_path=key_path, password=password,
              trust_pem=wiring.trust_pem)
    members = {e.fingerprint: e.rank for e in wiring.endpoints if e.fingerprint}
    return TlsPolicy(server=mutual_context(server=True, **kw),
                     client=mutual_context(server=False, **kw), members=members)


@dataclass
class Links:
    """What :func:`open_links` opened for one process; :meth:`close` releases all of it."""

    store: Any
    monitor_store: Any
    mesh: Mesh
    workdir: str
    extra: list[Any] = field(default_factory=list)

    def close(self) -> None:
        self.mesh.close()
        for s in self.extra:
            with contextlib.suppress(Exception):
                s.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def open_links(wiring: Wiring, rank: int, *, timeout: timedelta, store_path: str | None,
               open_file_store: Any) -> Links:
    """Bind our listener, open the session store(s) and build the mesh (not yet connected)."""
    workdir = tempfile.mkdtemp(prefix="veil-tls-")  # 0700: our TLS key file (encrypted) lives here
    try:
        return _open(wiring, rank, timeout, store_path, open_file_store, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _open(wiring: Wiring, rank: int, timeout: timedelta, store_path: str | None,
          open_file_store: Any, workdir: str) -> Links:
    eps = {e.rank: e for e in wiring.endpoints}
    tls = _tls_policy(wiring, rank, workdir) if wiring.kind == "tls" else None
    listener = listen(wiring.bind or eps[rank].address)
    if wiring.publish_ports or store_path is not None:
        store = open_file_store(store_path)
        mon = open_file_store(store_path)
        if wiring.publish_ports:
            eps = _exchange_ports(store, rank, eps, listener, timeout)
        return Links(store, mon, Mesh(rank, eps, listener=listener, digest=wiring.digest,
                                      tls=tls), workdir)
    if rank == 0:  # multi-host: party 0 serves the store on its mesh listener
        server = StoreServer()
        mesh = Mesh(rank, eps, listener=listener, digest=wiring.digest, tls=tls,
                    on_store=server.serve)
        return Links(LocalStore(server), LocalStore(server), mesh, workdir)
    mesh = Mesh(rank, eps, listener=listener, digest=wiring.digest, tls=tls)
    deadline = time.monotonic() + timeout.total_seconds()
    socks = [open_stream(eps[0], rank=rank, digest=mesh.digest, purpose=STORE, tls=tls,
                         deadline=deadline) for _ in range(2)]
    store, mon = NetStore(socks[0]), NetStore(socks[1])
    return Links(store, mon, mesh, workdir, extra=[store, mon])


def _exchange_ports(store: Any, rank: int, eps: dict[int, Endpoint], listener: Any,
                    timeout: timedelta) -> dict[int, Endpoint]:
    port = listener.getsockname()[1]
    store.set(f"port/{rank}", str(port))
    keys = [f"port/{r}" for r in eps]
    store.wait(keys, timeout)
    out = {}
    for r, e in eps.items():
        host = e.address[0] if isinstance(e.address, tuple) else "127.0.0.1"
        out[r] = Endpoint(r, (host, int(bytes(store.get(f"port/{r}")))), e.fingerprint, e.label)
    return out

