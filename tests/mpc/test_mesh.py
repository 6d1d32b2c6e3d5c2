"""Veil's transport (``veil.mpc._runtime.mesh``) and session store (``netstore``), in-process.

Two or three meshes run in threads of this process over real sockets: authenticated TLS 1.3
(pinned to the members' certificates) or Unix sockets. Each refusal the docs promise is
provoked here: an unlisted certificate, a listed member at another member's address, another
session's hello, a payload of the wrong length, a dead peer, a silent one.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from veil.errors import AuthenticationError
from veil.mpc._runtime.mesh import STORE, Endpoint, Mesh, TlsPolicy, listen, open_stream
from veil.mpc._runtime.netstore import LocalStore, NetStore, StoreServer
from veil.trust.identity import Identity, tls_files
from veil.trust.tls import mutual_context

DIGEST = b"d" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ids():
    return [Identity.ephemeral(f"m{i}") for i in range(4)]


def _policy(me: Identity, members: list[Identity], folder: str) -> TlsPolicy:
    cert, key, pw = tls_files(me, folder)
    trust = b"".join(i.certificate_pem for i in members)
    kw = dict(cert_path=cert, key_path=key, password=pw, trust_pem=trust)
    return TlsPolicy(mutual_context(server=True, **kw), mutual_context(server=False, **kw),
                     {i.fingerprint: r for r, i in enumerate(members)})


def _tls_meshes(ids, n: int, tmp_path, *, presented=None, digests=None):
    """``n`` meshes over TLS; ``presented[r]``: the identity rank r really uses."""
    members = ids[:n]
    eps = {r: Endpoint(r, ("127.0.0.1", _free_port()), members[r].fingerprint, f"m{r}")
           for r in range(n)}
    meshes = []
    for r in range(n):
        folder = tmp_path / f"tls{r}"
        folder.mkdir()
        me = (presented or {}).get(r, members[r])
        meshes.append(Mesh(r, eps, listener=listen(eps[r].address),
                           digest=(digests or {}).get(r, DIGEST),
                           tls=_policy(me, members, str(folder))))
    return meshes


def _connect_all(meshes, timeout: float = 10.0) -> dict[int, BaseException]:
    errors: dict[int, BaseException] = {}

    def go(m: Mesh) -> None:
        try:
            m.connect(timeout)
        except BaseException as exc:  # collected for the test
            errors[m.rank] = exc

    threads = [threading.Thread(target=go, args=(m,)) for m in meshes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return errors


def _eventually(predicate, seconds: float = 5.0) -> None:
    """The accepting side records a refusal in its own thread, a moment after the handshake."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the refusal was never recorded"
        time.sleep(0.02)


def _close(meshes) -> None:
    for m in meshes:
        m.close()


def test_tls_meshes_exchange_keyed_messages_in_any_order(ids, tmp_path) -> None:
    meshes = _tls_meshes(ids, 3, tmp_path)
    try:
        assert _connect_all(meshes) == {}
        big = os.urandom(3 << 20)
        meshes[0].send(1, 7, 2, 1, b"second")
        meshes[0].send(1, 7, 1, 1, b"first")
        meshes[2].send(1, 0, 0, 5, big)
        assert meshes[1].recv(0, 7, 1, 1, 5) == b"first"  # by key, not by arrival
        assert meshes[1].recv(0, 7, 2, 1, 5) == b"second"
        assert bytes(meshes[1].recv(2, 0, 0, 5, 5)) == big
        assert meshes[1].bytes_received == len(big) + 11
    finally:
        _close(meshes)


def test_an_unlisted_certificate_is_refused_and_named(ids, tmp_path) -> None:
    mallory = Identity.ephemeral("m1")  # same name, not the listed certificate
    meshes = _tls_meshes(ids, 2, tmp_path, presented={1: mallory})
    try:
        errors = _connect_all(meshes, timeout=3)
        assert isinstance(errors[1], AuthenticationError), errors
        assert "refused this process" in str(errors[1])  # its view: an alert, or EOF
        _eventually(lambda: any("not one of the session manifest's" in r
                                for r in meshes[0].refused))
        # and rank 0, connecting to the impostor's listener, refuses its certificate too
        assert isinstance(errors.get(0), AuthenticationError), errors
        assert "refused m1 at 127.0.0.1" in str(errors[0])
    finally:
        _close(meshes)


def test_a_listed_member_at_another_members_address_is_refused(ids, tmp_path) -> None:
    """Rank 1 answers where the manifest puts rank 2 (a hijacked address): pinning refuses it
    although its certificate is listed."""
    meshes = _tls_meshes(ids, 3, tmp_path)
    try:
        meshes[0].endpoints[2] = Endpoint(2, meshes[1].endpoints[1].address,
                                          ids[2].fingerprint, "m2")
        with pytest.raises(AuthenticationError, match="rank 1"):
            open_stream(meshes[0].endpoints[2], rank=0, digest=DIGEST, purpose=1,
                        tls=meshes[0].tls, deadline=time.monotonic() + 5)
    finally:
        _close(meshes)


def test_another_sessions_hello_is_refused(ids, tmp_path) -> None:
    meshes = _tls_meshes(ids, 2, tmp_path, digests={1: b"x" * 32})
    try:
        errors = _connect_all(meshes, timeout=3)
        assert isinstance(errors[1], AuthenticationError), errors
        _eventually(lambda: any("another session" in r for r in meshes[0].refused))
    finally:
        _close(meshes)


def test_a_plaintext_client_is_refused(ids, tmp_path) -> None:
    meshes = _tls_meshes(ids, 2, tmp_path)
    try:
        with socket.create_connection(meshes[0].endpoints[0].address, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 64)
            s.settimeout(5)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
        assert data == b"" or data[:1] == b"\x15"  # closed, or a TLS alert record
        _eventually(lambda: meshes[0].refused)
    finally:
        _close(meshes)


def _unix_meshes(n: int):
    folder = tempfile.mkdtemp(prefix="veil-mesh-test-")
    eps = {r: Endpoint(r, os.path.join(folder, f"m{r}.sock")) for r in range(n)}
    meshes = [Mesh(r, eps, listener=listen(eps[r].address), digest=DIGEST) for r in range(n)]
    assert _connect_all(meshes) == {}
    return meshes


def test_a_payload_of_the_wrong_length_a_dead_peer_and_a_silent_one_fail_clearly() -> None:
    import torch

    from veil.mpc._runtime.backend import fill

    meshes = _unix_meshes(3)
    try:
        meshes[1].send(0, 0, 0, 1, b"12345")
        with pytest.raises(ConnectionError, match="sent 5 bytes where 8 were expected"):
            fill(torch.zeros(1, dtype=torch.int64), meshes[0].recv(1, 0, 0, 1, 5), src=1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="waiting for rank 2"):
            meshes[0].recv(2, 0, 0, 9, 0.5)
        assert time.monotonic() - t0 < 3
        meshes[1].close()
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="connection closed by rank 1"):
            meshes[0].recv(1, 0, 0, 2, 30)
        assert time.monotonic() - t0 < 5, "a dead peer must not cost the whole timeout"
        assert meshes[0].missing() == [1]
    finally:
        _close(meshes)


def test_the_session_store_over_the_mesh(ids, tmp_path) -> None:
    server = StoreServer()
    members = ids[:2]
    eps = {r: Endpoint(r, ("127.0.0.1", _free_port()), members[r].fingerprint)
           for r in range(2)}
    folder = tmp_path / "s"
    folder.mkdir()
    host = Mesh(0, eps, listener=listen(eps[0].address), digest=DIGEST,
                tls=_policy(members[0], members, str(folder)), on_store=server.serve)
    (tmp_path / "c").mkdir()
    tls1 = _policy(members[1], members, str(tmp_path / "c"))
    sock = open_stream(eps[0], rank=1, digest=DIGEST, purpose=STORE, tls=tls1,
                       deadline=time.monotonic() + 5)
    client, local = NetStore(sock), LocalStore(server)
    try:
        client.set("a", "1")
        assert local.get("a") == b"1"
        assert client.add("hb/1", 2) == 2 and local.add("hb/1", 0) == 2
        assert client.check(["a"]) and not client.check(["a", "b"])
        threading.Timer(0.3, lambda: local.set("b", b"x")).start()
        from datetime import timedelta

        client.wait(["b"], timedelta(seconds=5))
        with pytest.raises(TimeoutError, match="'never'"):
            client.wait(["never"], timedelta(seconds=0.3))
        with pytest.raises(ConnectionError, match="did not answer"):
            client.set("k" * 10_000, "v")  # over the key limit: the server hangs up
    finally:
        client.close()
        host.close()
