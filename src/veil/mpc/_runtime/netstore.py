"""The session store of a multi-host session, served by party 0 over the mesh's TLS listener.

It replaces torch's ``TCPStore`` (plaintext, and open to anyone who reaches the port) for
Veil's own bookkeeping: heartbeats, phases, error categories, the end-of-session marks (see
``monitor.py``). A client reaches it through :func:`veil.mpc._runtime.mesh.open_stream` with
purpose ``STORE``, so it is authenticated exactly like a mesh stream: only the manifest's
members get in. Keys and values are short byte strings with hard limits; nothing is unpickled.

Requests: ``op`` (1 byte), key count and keys, a value, a wait bound; answers: a status byte
and a value. :class:`LocalStore` gives party 0 the same interface without a socket.
"""

from __future__ import annotations

import abc
import struct
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

__all__ = ["StoreServer", "NetStore", "LocalStore", "MAX_KEY", "MAX_VALUE"]

SET, GET, ADD, CHECK, WAIT = range(1, 6)
OK, MISSING, BAD = 0, 1, 2
MAX_KEY, MAX_VALUE, MAX_KEYS, MAX_ENTRIES = 512, 1 << 16, 64, 1 << 16
_HEAD = struct.Struct("!BBId")  # op, key count, value length, wait seconds
_LEN = struct.Struct("!I")
_ANSWER = struct.Struct("!BI")


def _read_exact(sock: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the session store connection closed")
        buf += chunk
    return bytes(buf)


class StoreServer:
    """Key-value store held in party 0's process; one thread per client connection."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._cond = threading.Condition()

    def serve(self, sock: Any, rank: int) -> None:
        """Answer requests on ``sock`` until it closes (runs in the mesh's accept thread)."""
        try:
            while True:
                op, nkeys, vlen, wait_s = _HEAD.unpack(_read_exact(sock, _HEAD.size))
                if nkeys > MAX_KEYS or vlen > MAX_VALUE:
                    return
                keys = []
                for _ in range(nkeys):
                    (klen,) = _LEN.unpack(_read_exact(sock, _LEN.size))
                    if klen > MAX_KEY:
                        return
                    keys.append(_read_exact(sock, klen))
                value = _read_exact(sock, vlen)
                status, answer = self.handle(op, keys, value, wait_s)
                sock.sendall(_ANSWER.pack(status, len(answer)) + answer)
        except (OSError, ConnectionError, struct.error):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def handle(self, op: int, keys: list[bytes], value: bytes, wait_s: float
               ) -> tuple[int, bytes]:
        if not keys:
            return BAD, b""
        with self._cond:
            if op == SET:
                if keys[0] not in self._data and len(self._data) >= MAX_ENTRIES:
                    return BAD, b""
                self._data[keys[0]] = value
                self._cond.notify_all()
                return OK, b""
            if op == ADD:
                try:
                    delta = int(value)
                    now = int(self._data.get(keys[0], b"0")) + delta
                except ValueError:
                    return BAD, b""
                self._data[keys[0]] = str(now).encode()
                self._cond.notify_all()
                return OK, str(now).encode()
            if op == CHECK:
                return OK, b"1" if all(k in self._data for k in keys) else b"0"
            if op in (GET, WAIT):
                bound = max(0.0, min(float(wait_s), 86400.0))
                found = self._cond.wait_for(lambda: all(k in self._data for k in keys), bound)
                if not found:
                    return MISSING, b""
                return OK, self._data[keys[0]] if op == GET else b""
        return BAD, b""


class _Client(abc.ABC):
    """The interface ``monitor.py`` and ``party.py`` use (a subset of torch's Store)."""

    timeout_s = 30.0

    def set_timeout(self, timeout: timedelta) -> None:
        self.timeout_s = float(timeout.total_seconds())

    @abc.abstractmethod
    def _call(self, op: int, keys: Sequence[bytes], value: bytes = b"",
              wait_s: float = 0.0) -> bytes:
        """Send one request; the answer's value (or an exception)."""

    def set(self, key: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._call(SET, [key.encode()], data)

    def get(self, key: str) -> bytes:
        return self._call(GET, [key.encode()], wait_s=self.timeout_s)

    def add(self, key: str, amount: int) -> int:
        return int(self._call(ADD, [key.encode()], str(int(amount)).encode()))

    def check(self, keys: Sequence[str]) -> bool:
        return self._call(CHECK, [k.encode() for k in keys]) == b"1"

    def wait(self, keys: Sequence[str], timeout: timedelta | None = None) -> None:
        bound = self.timeout_s if timeout is None else float(timeout.total_seconds())
        self._call(WAIT, [k.encode() for k in keys], wait_s=bound)

    @staticmethod
    def _check(status: int, answer: bytes, op: int, keys: Sequence[bytes]) -> bytes:
        if status == MISSING:
            raise TimeoutError(f"session store: timed out waiting for {keys[0].decode()!r}")
        if status != OK:
            raise ValueError(f"session store refused request {op} for {keys[0].decode()!r}")
        return answer


class LocalStore(_Client):
    """Party 0's own view of the store it serves (no socket)."""

    def __init__(self, server: StoreServer) -> None:
        self._server = server

    def _call(self, op: int, keys: Sequence[bytes], value: bytes = b"",
              wait_s: float = 0.0) -> bytes:
        status, answer = self._server.handle(op, list(keys), value, wait_s)
        return self._check(status, answer, op, keys)


class NetStore(_Client):
    """A client connection to party 0's store (an authenticated stream from ``open_stream``)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def _call(self, op: int, keys: Sequence[bytes], value: bytes = b"",
              wait_s: float = 0.0) -> bytes:
        parts = [_HEAD.pack(op, len(keys), len(value), float(wait_s))]
        for k in keys:
            parts += [_LEN.pack(len(k)), k]
        parts.append(value)
        with self._lock:
            self._sock.settimeout(max(self.timeout_s, wait_s) + 5.0)
            t0 = time.monotonic()
            try:
                self._sock.sendall(b"".join(parts))
                status, n = _ANSWER.unpack(_read_exact(self._sock, _ANSWER.size))
                answer = _read_exact(self._sock, n) if n else b""
            except OSError as exc:
                raise ConnectionError(
                    f"the session store (party 0) did not answer within "
                    f"{time.monotonic() - t0:.1f} s ({type(exc).__name__})") from exc
        return self._check(status, answer, op, keys)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
