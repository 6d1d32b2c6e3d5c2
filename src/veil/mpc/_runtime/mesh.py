"""Veil's transport: one authenticated stream for each ordered pair of processes of a session.

Every process listens on one socket and opens one connection to each other process; it *writes*
only on the connections it opened and *reads* only on those it accepted, so each stream (a TLS
socket included: OpenSSL objects must not be shared between threads) is used by one thread.
A reader thread per accepted connection drains it into an in-memory inbox at once, so a send
never waits for the receiver's program to reach its matching receive and two parties sending to
each other never deadlock.

Two ways to secure the streams:

* **TLS** (multi-host sessions, and local ones asked for ``transport="tls"``): TCP sockets with
  mutually authenticated TLS 1.3 (:mod:`veil.trust.tls`); each end pins the certificate the
  manifest lists for the other's rank. A connection is only used after the acceptor answered
  the hello with an acknowledgement, so a refused certificate fails the set-up with a reason.
* **Local** (the default for ``veil.mpc.run``): Unix sockets in the session's private directory
  (mode 0700, its name a random secret known only to the launcher and its children). Only this
  user's processes that know the name can connect; nothing is reachable off this machine.

Frames are ``group, kind, seq, length`` (24 bytes) and the payload. What a message *means* comes
only from the receiver's own expectations (its key): nothing received is ever unpickled, and a
frame longer than :data:`MAX_FRAME` or of another length than expected is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veil.errors import AuthenticationError
from veil.trust.tls import describe_tls_error, peer_fingerprint

__all__ = ["Endpoint", "TlsPolicy", "Mesh", "MESH", "STORE", "MAX_FRAME", "FRAME", "HELLO",
           "open_stream", "listen"]

MAGIC = b"VEILMSH1"
HELLO = struct.Struct("!8s32sIB")  # magic, session digest, sender rank, purpose
FRAME = struct.Struct("!IIQQ")  # group, kind, seq, payload length
ACK, NACK = b"\x01", b"\x00"
MESH, STORE = 1, 2
MAX_FRAME = 1 << 33  # 8 GiB: larger than any tensor a session sends, small enough to refuse junk
HANDSHAKE_S = 15.0
Key = tuple[int, int, int, int]  # (src, group, kind, seq)


@dataclass(frozen=True)
class Endpoint:
    """Where a process listens: ``(host, port)`` for TCP, a path for a Unix socket."""

    rank: int
    address: tuple[str, int] | str
    fingerprint: str | None = None  # the certificate it must present (TLS)
    label: str = ""

    def describe(self) -> str:
        a = self.address
        where = a if isinstance(a, str) else f"{a[0]}:{a[1]}"
        return f"{self.label or f'rank {self.rank}'} at {where}"


@dataclass(frozen=True)
class TlsPolicy:
    """TLS contexts of this process and the members' certificates, by fingerprint."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    members: dict[str, int] = field(default_factory=dict)  # fingerprint -> rank


def listen(address: tuple[str, int] | str) -> socket.socket:
    """A listening socket, bound now (so no other process can take the port in between)."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        sock.bind(address)
        os.chmod(address, 0o600)
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    sock.listen(128)
    return sock


def _tune(sock: socket.socket) -> None:
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)


def _read_exact(sock: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            raise ConnectionError("connection closed")
        got += k
    return buf


def open_stream(target: Endpoint, *, rank: int, digest: bytes, purpose: int,
                tls: TlsPolicy | None, deadline: float) -> Any:
    """Connect to ``target`` (retrying until ``deadline`` while nobody listens), authenticate,
    send our hello and wait for the acknowledgement. Raises AuthenticationError when either
    end refuses the other, TimeoutError when nobody answers in time."""
    last: BaseException | None = None
    while True:
        try:
            return _open_once(target, rank=rank, digest=digest, purpose=purpose, tls=tls,
                              deadline=deadline)
        except (TimeoutError, ConnectionRefusedError, FileNotFoundError,
                ConnectionResetError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"could not reach {target.describe()} ({type(last).__name__}: "
                               f"{last}); is it started, and is the address right?")
        time.sleep(0.05)


def _open_once(target: Endpoint, *, rank: int, digest: bytes, purpose: int,
               tls: TlsPolicy | None, deadline: float) -> Any:
    a = target.address
    wait = max(0.05, min(HANDSHAKE_S, deadline - time.monotonic()))
    if isinstance(a, str):
        sock: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(wait)
        sock.connect(a)
    else:
        sock = socket.create_connection(a, timeout=wait)
    _tune(sock)
    try:
        if tls is not None:
            sock = _client_handshake(sock, target, tls)
        sock.sendall(HELLO.pack(MAGIC, digest, rank, purpose))
        answer = _read_exact(sock, 1)
    except ssl.SSLError as exc:
        sock.close()
        raise AuthenticationError(
            f"{target.describe()} refused this process: {describe_tls_error(exc)}; check that "
            "its manifest lists this party's certificate") from exc
    except AuthenticationError:  # (a ConnectionError too) we refused the acceptor
        sock.close()
        raise
    except ConnectionError as exc:  # the acceptor closed without an answer: it refused us
        sock.close()
        raise AuthenticationError(
            f"{target.describe()} closed the connection during the hello: it does not accept "
            "this process (another session, or a manifest that differs)") from exc
    except BaseException:
        sock.close()
        raise
    if answer != ACK:
        sock.close()
        raise AuthenticationError(f"{target.describe()} refused this process's hello")
    sock.settimeout(None)
    return sock


def _client_handshake(sock: socket.socket, target: Endpoint, tls: TlsPolicy) -> ssl.SSLSocket:
    try:
        ssock = tls.client.wrap_socket(sock, server_side=False)
    except ssl.SSLError as exc:
        sock.close()
        raise AuthenticationError(
            f"refused {target.describe()}: {describe_tls_error(exc)}; it may be an impostor, "
            "or the manifest is out of date") from exc
    got = peer_fingerprint(ssock)
    if got != target.fingerprint:
        ssock.close()
        other = tls.members.get(got)
        who = f"the certificate of rank {other}" if other is not None else f"certificate {got}"
        raise AuthenticationError(
            f"refused {target.describe()}: it presented {who}, not the one the manifest lists "
            f"for it ({target.fingerprint})")
    return ssock


class Mesh:
    """The connections of one process to every other process of a session."""

    def __init__(self, rank: int, endpoints: dict[int, Endpoint], *, listener: socket.socket,
                 digest: bytes, tls: TlsPolicy | None = None,
                 on_store: Callable[[Any, int], None] | None = None) -> None:
        self.rank = rank
        self.endpoints = endpoints
        self.digest = hashlib.sha256(digest).digest() if len(digest) != 32 else digest
        self.tls = tls
        self.on_store = on_store  # party 0: serves session-store connections
        self.refused: list[str] = []
        self._listener = listener
        self._out: dict[int, Any] = {}
        self._out_locks = {r: threading.Lock() for r in endpoints if r != rank}
        self._in: dict[int, Any] = {}
        self._dead: dict[int, str] = {}
        self._inbox: dict[Key, bytearray] = {}
        self._cond = threading.Condition()
        self._closed = False
        # bytes_received: arrived (a reader thread may take a message early); bytes_consumed:
        # handed to this process's program by recv (what it has received, so far, in order)
        self.bytes_sent = self.bytes_received = self.bytes_consumed = 0
        threading.Thread(target=self._accept_loop, name="veil-mesh-accept", daemon=True).start()

    # -- set-up ------------------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Open our streams to every other process and wait for theirs, within ``timeout``."""
        deadline = time.monotonic() + timeout
        for r, ep in sorted(self.endpoints.items()):
            if r != self.rank and r not in self._out:
                self._out[r] = open_stream(ep, rank=self.rank, digest=self.digest,
                                           purpose=MESH, tls=self.tls, deadline=deadline)
        with self._cond:
            others = set(self.endpoints) - {self.rank}
            self._cond.wait_for(lambda: others <= set(self._in) or self._closed,
                                timeout=max(0.0, deadline - time.monotonic()))
            missing = sorted(others - set(self._in))
        if missing:
            names = ", ".join(self.endpoints[r].describe() for r in missing)
            refused = f"; refused meanwhile: {'; '.join(self.refused)}" if self.refused else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {names} to connect "
                               f"back{refused}")

    def missing(self) -> list[int]:
        """Ranks not (or no longer) connected both ways."""
        with self._cond:
            return sorted(r for r in self.endpoints if r != self.rank and (
                r not in self._in or r not in self._out or r in self._dead))

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock, peer), daemon=True,
                             name="veil-mesh-in").start()

    def _refuse(self, sock: Any, peer: Any, why: str) -> None:
        where = peer if isinstance(peer, str) and peer else (
            f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local process")
        text = f"refused a connection from {where}: {why}"
        with self._cond:
            self.refused.append(text)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"veil: rank {self.rank} {text}\n")
        with contextlib.suppress(OSError):
            sock.close()

    def _serve(self, sock: Any, peer: Any) -> None:
        _tune(sock)
        sock.settimeout(HANDSHAKE_S)
        fingerprint = None
        try:
            if self.tls is not None:
                sock = self.tls.server.wrap_socket(sock, server_side=True)
                fingerprint = peer_fingerprint(sock)
            magic, digest, rank, purpose = HELLO.unpack(_read_exact(sock, HELLO.size))
        except ssl.SSLError as exc:
            return self._refuse(sock, peer, describe_tls_error(exc))
        except (OSError, ConnectionError, struct.error, AuthenticationError) as exc:
            return self._refuse(sock, peer, f"no valid hello ({type(exc).__name__})")
        why = self._check_hello(magic, digest, rank, purpose, fingerprint)
        if why:
            return self._refuse(sock, peer, why)
        with self._cond:
            duplicate = purpose == MESH and rank in self._in
        if duplicate:
            return self._refuse(sock, peer, f"rank {rank} is already connected")
        try:
            sock.sendall(ACK)
        except OSError:
            return None
        sock.settimeout(None)
        if purpose == STORE:
            return self.on_store(sock, rank) if self.on_store else None
        with self._cond:
            self._in[rank] = sock
            self._cond.notify_all()
        return self._read_loop(rank, sock)

    def _check_hello(self, magic: bytes, digest: bytes, rank: int, purpose: int,
                     fingerprint: str | None) -> str:
        if magic != MAGIC:
            return "it does not speak Veil's mesh protocol"
        if digest != self.digest:
            return "it runs another session (its manifest or session key differs)"
        if rank not in self.endpoints or rank == self.rank:
            return f"it claims rank {rank}, which this session does not have"
        if purpose not in (MESH, STORE) or (purpose == STORE and self.on_store is None):
            return f"unknown purpose {purpose}"
        if self.tls is not None and fingerprint != self.endpoints[rank].fingerprint:
            holder = self.tls.members.get(fingerprint or "")
            shown = "another certificate" if holder is None else f"rank {holder}'s certificate"
            return f"it claims rank {rank} but presented {shown}"
        return ""

    # -- data --------------------------------------------------------------------------------
    def _read_loop(self, src: int, sock: Any) -> None:
        try:
            while True:
                group, kind, seq, n = FRAME.unpack(_read_exact(sock, FRAME.size))
                if n > MAX_FRAME:
                    raise ConnectionError(f"a frame of {n} bytes (more than {MAX_FRAME})")
                buf = _read_exact(sock, n) if n else bytearray()
                with self._cond:
                    self.bytes_received += n
                    self._inbox[(src, group, kind, seq)] = buf
                    self._cond.notify_all()
        except (OSError, ConnectionError, ValueError) as exc:
            with self._cond:
                if not self._closed:
                    self._dead.setdefault(src, f"{type(exc).__name__}: {exc}")
                self._cond.notify_all()

    def send(self, dst: int, group: int, kind: int, seq: int, payload: Any) -> None:
        """Send ``payload`` (bytes-like) to ``dst`` under the key ``(group, kind, seq)``."""
        view = memoryview(payload).cast("B")
        n = view.nbytes
        header = FRAME.pack(group, kind, seq, n)
        sock = self._out.get(dst)
        if sock is None or dst in self._dead:
            raise ConnectionError(f"connection closed: no stream to rank {dst} "
                                  f"({self._dead.get(dst, 'never connected')})")
        try:
            with self._out_locks[dst]:
                if n <= 1 << 16:
                    sock.sendall(header + bytes(view))
                else:
                    sock.sendall(header)
                    sock.sendall(view)
        except OSError as exc:
            with self._cond:
                self._dead.setdefault(dst, f"{type(exc).__name__}: {exc}")
            raise ConnectionError(f"connection closed by rank {dst} while sending "
                                  f"({type(exc).__name__})") from exc
        self.bytes_sent += n

    def recv(self, src: int, group: int, kind: int, seq: int, timeout: float) -> bytearray:
        """The payload ``src`` sent under ``(group, kind, seq)``; waits at most ``timeout``."""
        key = (src, group, kind, seq)
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._inbox:
                if src in self._dead:
                    raise ConnectionError(f"connection closed by rank {src} "
                                          f"({self._dead[src]})")
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for rank {src}")
                self._cond.wait(left)
            payload = self._inbox.pop(key)
            self.bytes_consumed += len(payload)
            return payload

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._out.values()) + list(self._in.values()):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
