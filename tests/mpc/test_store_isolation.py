"""A local session is reachable only from this machine, and only by holders of its secret.

The session store of ``mpc.run`` is a file in a private directory whose name is a random
secret (``veil.mpc._runtime.party.open_store``), and the parties talk over Unix sockets in the
same directory (``veil.mpc._runtime.wiring``): no process of the session listens on any TCP or
UDP port, so nothing answers from this machine's addresses, loopback included, and a client
that connects to whatever the session's MASTER_PORT names can neither read nor inject store keys
(an injected ``err/1`` would abort it).
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import torch

from veil import mpc
from veil.mpc._runtime import launch as _launch


def waiting_job(party, flag_dir):
    """Shares, then waits (with the session up) until the test creates `go`."""
    x = party.share(torch.arange(3.0) if party.rank == 0 else None, src=0)
    Path(flag_dir, f"ready.{party.rank}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(flag_dir, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with party.phase("after the probe"):
        return party.reveal(x + 1.0)


def _external_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _store_client(host: str, port: int) -> bool:
    """True if a TCPStore client could connect and inject an error for party 1."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=1),
                              wait_for_workers=False)
        store.set("err/1", "ConfigurationError")
        return True
    except Exception:
        return False


def test_nothing_of_a_local_session_is_reachable_off_loopback_or_without_its_secret(
        tmp_path, monkeypatch) -> None:
    external = _external_address()
    if external is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    stores: list[str] = []
    original = _launch._private_store

    def spy() -> tuple[str, str]:
        store_dir, path = original()
        stores.append(path)
        return store_dir, path

    monkeypatch.setattr(_launch, "_private_store", spy)
    ports: list[int] = []
    free_port = _launch._free_port
    monkeypatch.setattr(_launch, "_free_port", lambda: ports.append(free_port()) or ports[-1])
    box: dict[str, object] = {}

    def launch() -> None:
        try:
            box["result"] = mpc.run(waiting_job, parties=2, args=(str(tmp_path),), timeout=30)
        except Exception as exc:  # reported below
            box["error"] = exc

    thread = threading.Thread(target=launch)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready.{r}").exists() for r in range(2)):
            assert thread.is_alive(), box
            assert time.monotonic() < deadline, "parties never started"
            time.sleep(0.05)
        time.sleep(0.3)
        procs = {p.pid for p in psutil.Process().children(recursive=True)}
        listening = _listening(procs)
        # no process of the session listens on any network port, loopback included
        assert listening == [], listening
        # the store is a file in a directory only this user may enter, named by the secret,
        # and the parties' sockets are Unix sockets in that directory (0600)
        (path,) = stores
        store_dir = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(store_dir).st_mode) == 0o700
        socks = [n for n in os.listdir(store_dir) if n.endswith(".sock")]
        assert len(socks) == 3, socks  # two parties and the dealer
        for n in socks:
            st = os.stat(os.path.join(store_dir, n))
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert len(os.path.basename(path)) == 64
        for pid in procs:  # the secret is in no process's command line or environment
            try:
                proc = psutil.Process(pid)
                seen = " ".join(proc.cmdline()) + " ".join(proc.environ().values())
            except psutil.Error:
                continue
            assert os.path.basename(path) not in seen
        # MASTER_PORT (where party 0 used to host a TCPStore): no store answers there, so a
        # client cannot list keys or inject err/1 (which would abort the session)
        (master_port,) = ports
        for host in ("127.0.0.1", external):
            assert not _store_client(host, master_port), f"a store answered on {host}"
    finally:
        (tmp_path / "go").touch()
        thread.join(timeout=120)
    assert "error" not in box, box.get("error")  # nothing aborted the session
    assert [r.tolist() for r in box["result"]] == [[1.0, 2.0, 3.0]] * 2
    assert not os.path.exists(os.path.dirname(stores[0])), "store directory left behind"
