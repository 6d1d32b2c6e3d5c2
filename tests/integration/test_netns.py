"""A real multi-host session: three parties and the dealer in four network namespaces.

The namespaces are joined by veth pairs to a bridge that lives in a fifth namespace, with
addresses 10.77.0.x that exist only inside them; nothing in the host's own network namespace is
touched. Each process is started with the ``veil party`` command, exactly as on separate hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.netns

PARTIES = 3
TIMEOUT_S = 30


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _namespaces_work() -> str | None:
    """None if ``ip netns add`` works here, else the reason to skip."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"veilprobe{uuid.uuid4().hex[:6]}"
    proc = _ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"`ip netns add` fails here: {proc.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def fabric():
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    bridge_ns = f"veilbr{tag}"
    names = [f"veil{tag}p{i}" for i in range(PARTIES)] + [f"veil{tag}d"]
    created: list[str] = []
    try:
        for ns in [bridge_ns, *names]:
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        addrs = []
        for i, ns in enumerate(names):
            addr = f"10.77.0.{i + 1}"
            _ip("-n", bridge_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            addrs.append(addr)
        yield names, addrs
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def _veil(ns: str, *args: str) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "veil.cli", "party", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_three_parties_and_a_dealer_on_four_hosts(fabric) -> None:
    names, addrs = fabric
    master = f"{addrs[0]}:29500"
    common = ["--world-size", str(PARTIES), "--master", master, "--timeout", str(TIMEOUT_S)]
    procs = [_veil(names[r], "--rank", str(r), *common, "--job", "selftest",
                   "--arg", f"value={r + 2}", "--arg", "length=5", "--arg", "threshold=8.5")
             for r in range(PARTIES)]
    procs.append(_veil(names[PARTIES], "--dealer", *common))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S * 3)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for rc, _out, err in outputs:
        assert rc == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outputs[:PARTIES]]
    # values 2, 3, 4: sum 9 (> 8.5), product 24 revealed to party 0 only
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["sum"] == pytest.approx([9.0] * 5, abs=1e-3)
        assert res["above"] == [1] * 5
        if r == 0:
            assert res["product"] == pytest.approx([24.0] * 5, abs=1e-2)
        else:
            assert res["product"] is None
    assert outputs[PARTIES][1].strip() == ""  # the dealer prints no result


@pytest.mark.slow
def test_a_missing_party_is_named_at_rendezvous(fabric) -> None:
    names, addrs = fabric
    master = f"{addrs[0]}:29501"
    common = ["--world-size", "2", "--master", master, "--timeout", "3"]
    p0 = _veil(names[0], "--rank", "0", *common, "--job", "selftest", "--host-dealer")
    try:
        _, err = p0.communicate(timeout=120)  # the rendezvous waits at least 30 s
    finally:
        if p0.poll() is None:
            os.killpg(p0.pid, 9)
            p0.wait()
    assert p0.returncode == 1
    assert "PartyFailure" in err and "party 1" in err and "rendezvous" in err
    assert "Traceback" not in err
