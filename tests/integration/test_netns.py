"""Real multi-host sessions: parties, the dealer and an attacker in their own network namespaces.

The namespaces are joined by veth pairs to a bridge that lives in one more namespace, with
addresses 10.77.0.x that exist only inside them; nothing in the host's own network namespace is
touched. Each process is started with ``veil party --manifest``, exactly as on separate hosts,
each with its own identity (``veil.trust.identity``, sealed under a passphrase).

1. three parties and the dealer run a session; a sniffer on the bridge records every frame;
2. the capture holds neither the input nor any party's share (and, as a control, the same
   session over ``--insecure-plaintext`` gloo does show the shares to the same sniffer);
3. an impostor with a valid-looking but unlisted certificate is refused, and named;
4. a man-in-the-middle that re-terminates TLS at a party's address is refused, and receives no
   application byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

PARTIES = 3
TIMEOUT_S = 30
HERE = Path(__file__).resolve().parent
PASSPHRASE = "netns-test-passphrase"
ATTACKER = PARTIES + 1  # index of the attacker's namespace (after the dealer's)


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
    """(bridge namespace, host namespaces, their addresses): parties, dealer, attacker."""
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    bridge_ns = f"veilbr{tag}"
    names = [f"veil{tag}p{i}" for i in range(PARTIES)] + [f"veil{tag}d", f"veil{tag}x"]
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
        yield bridge_ns, names, addrs
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


MEMBERS = ["hospital-a", "hospital-b", "hospital-c", "dealer"]


def _make_identities(folder: Path) -> dict:
    from veil.trust.identity import Identity
    from veil.trust.seal import Secret

    out = {}
    for name in MEMBERS + ["mallory"]:
        ident = Identity.new(name)
        ident.save(folder, Secret.passphrase(PASSPHRASE), scrypt_log2_n=10)
        out[name] = ident
    return out


def _write_manifest(path: Path, ids: dict, addrs: list[str], *, port: int,
                    swap: dict[str, tuple[str, str]] | None = None) -> Path:
    """The manifest of the session; ``swap`` maps a member to (identity name, address)."""
    from veil.trust.manifest import Manifest, Member

    members = []
    for rank, name in enumerate(MEMBERS):
        who, addr = (swap or {}).get(name, (name, addrs[rank]))
        members.append(Member(name=name, rank=rank, host=addr, port=port,
                              certificate_pem=ids[who].certificate_pem,
                              fingerprint=ids[who].fingerprint, is_dealer=name == "dealer"))
    path.write_text(Manifest.build("netns-test", members).to_toml())
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, VEIL_PASSPHRASE=PASSPHRASE, TORCH_CPP_LOG_LEVEL="FATAL")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _in_ns(ns: str, *cmd: str, log: Path | None = None) -> subprocess.Popen:
    err = open(log, "w") if log is not None else subprocess.PIPE
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.PIPE,
                            stderr=err, text=True, start_new_session=True, env=_env())


def _party(ns: str, manifest: Path, name: str, *extra: str, log: Path | None = None
           ) -> subprocess.Popen:
    return _in_ns(ns, sys.executable, "-m", "veil.cli", "party", "--manifest", str(manifest),
                  "--as", name, "--identity", str(manifest.parent / f"{name}.key"),
                  "--timeout", str(TIMEOUT_S), *extra, log=log)


def _finish(procs: list[subprocess.Popen], wait_s: float) -> list[tuple[int, str, str]]:
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=wait_s)
            outputs.append((p.returncode, out, err or ""))
    finally:
        _kill(procs)
    return outputs


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _sniff(bridge_ns: str, folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    cap, stop = folder / "capture.bin", folder / "stop"
    proc = _in_ns(bridge_ns, sys.executable, str(HERE / "sniff.py"), str(cap), str(stop))
    _wait_for(lambda: Path(str(cap) + ".ready").exists(), 20, "the sniffer")
    return proc, cap, stop


def _stop_sniffer(proc: subprocess.Popen, cap: Path, stop: Path) -> bytes:
    stop.touch()
    proc.wait(timeout=20)
    return cap.read_bytes()


def _share_windows(folder: Path, parties: int) -> list[bytes]:
    """24-byte pieces of every party's share, 4 per share file: each fits in one TCP segment
    (MTU 1500) wherever it falls, so a plaintext transport would show most of them."""
    pieces = []
    for r in range(parties):
        data = (folder / f"share.{r}").read_bytes()
        pieces += [data[i:i + 24] for i in (0, 8000, 16000, 24000)]
    return pieces


def _input_pattern() -> bytes:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("netjob", HERE / "netjob.py")
    netjob = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(netjob)
    enc = torch.tensor([round(netjob.KNOWN_VALUE * 2 ** 16)] * 3, dtype=torch.int64)
    return enc.numpy().tobytes()


def _run_session(names: list[str], manifest: Path, out: Path, *, plaintext_master: str = ""
                 ) -> list[tuple[int, str, str]]:
    job = ["--job", "netjob:job", "--arg", f"out={out}"]
    if plaintext_master:
        common = [sys.executable, "-m", "veil.cli", "party", "--insecure-plaintext",
                  "--world-size", str(PARTIES), "--master", plaintext_master, "--timeout",
                  str(TIMEOUT_S)]
        procs = [_in_ns(names[r], *common, "--rank", str(r), *job) for r in range(PARTIES)]
        procs.append(_in_ns(names[PARTIES], *common, "--dealer"))
    else:
        procs = [_party(names[r], manifest, MEMBERS[r], *job) for r in range(PARTIES)]
        procs.append(_party(names[PARTIES], manifest, "dealer"))
    return _finish(procs, TIMEOUT_S * 3)


def test_three_parties_and_a_dealer_over_tls_and_a_sniffer_sees_no_share(fabric, tmp_path
                                                                          ) -> None:
    bridge_ns, names, addrs = fabric
    ids = _make_identities(tmp_path)
    manifest = _write_manifest(tmp_path / "session.toml", ids, addrs, port=29500)
    sniffer, cap, stop = _sniff(bridge_ns, tmp_path)
    try:
        outputs = _run_session(names, manifest, tmp_path)
    finally:
        capture = _stop_sniffer(sniffer, cap, stop)
    for rc, _out, err in outputs:
        assert rc == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outputs[:PARTIES]]
    assert [r["rank"] for r in results] == list(range(PARTIES))
    assert all(r["ok"] for r in results), results
    assert outputs[PARTIES][1].strip() == "null"  # the dealer returns nothing
    assert len(capture) > 200_000, "the sniffer saw (almost) nothing: is it on the link?"
    assert _input_pattern() not in capture
    seen = [w for w in _share_windows(tmp_path, PARTIES) if w in capture]
    assert seen == [], f"{len(seen)} share fragments crossed the link in plaintext"


def test_the_sniffer_does_see_shares_on_the_plaintext_gloo_path(fabric, tmp_path) -> None:
    """Control: the same session and sniffer over --insecure-plaintext gloo shows the shares,
    so the TLS test above cannot pass because the sniffer is blind."""
    bridge_ns, names, addrs = fabric
    sniffer, cap, stop = _sniff(bridge_ns, tmp_path)
    try:
        outputs = _run_session(names, tmp_path / "unused", tmp_path,
                               plaintext_master=f"{addrs[0]}:29510")
    finally:
        capture = _stop_sniffer(sniffer, cap, stop)
    for rc, _out, err in outputs:
        assert rc == 0, err[-3000:]
    seen = [w for w in _share_windows(tmp_path, PARTIES) if w in capture]
    assert len(seen) >= PARTIES, "the plaintext shares should be visible to the sniffer"


def test_an_impostor_with_an_unlisted_certificate_is_refused(fabric, tmp_path) -> None:
    """mallory takes hospital-b's place with a certificate of its own (same name, unlisted):
    party 0 refuses it at the handshake and says so; mallory's own run fails naming why."""
    _bridge, names, addrs = fabric
    ids = _make_identities(tmp_path)
    manifest = _write_manifest(tmp_path / "session.toml", ids, addrs, port=29520)
    evil = _write_manifest(tmp_path / "evil.toml", ids, addrs, port=29520,
                           swap={"hospital-b": ("mallory", addrs[ATTACKER])})
    log_a = tmp_path / "a.err"
    honest = [_party(names[0], manifest, "hospital-a", "--job", "selftest", log=log_a),
              _party(names[2], manifest, "hospital-c", "--job", "selftest"),
              _party(names[PARTIES], manifest, "dealer")]
    try:
        time.sleep(1.0)
        impostor = _in_ns(names[ATTACKER], sys.executable, "-m", "veil.cli", "party",
                          "--manifest", str(evil), "--as", "hospital-b", "--identity",
                          str(tmp_path / "mallory.key"), "--job", "selftest", "--timeout", "10")
        (rc, _out, err), = _finish([impostor], 90)
        assert rc == 1, err[-2000:]
        assert "refused" in err and "PartyFailure" in err, err[-2000:]
        assert "Traceback" not in err
        _wait_for(lambda: "refused a connection from " + addrs[ATTACKER] in log_a.read_text(),
                  30, "party 0 to report the refused impostor")
        text = log_a.read_text()
        assert "certificate is not one of the session manifest's" in text, text[-2000:]
        assert all(p.poll() is None for p in honest), "the honest parties should wait on"
    finally:
        _kill(honest)


def test_a_man_in_the_middle_that_re_terminates_tls_is_refused(fabric, tmp_path) -> None:
    """The manifest sends hospital-b to the attacker's address for hospital-a (a hijacked
    route); the attacker terminates TLS with its own 'hospital-a' certificate. hospital-b
    refuses it and sends it no application byte."""
    from veil.trust.identity import Identity

    _bridge, names, addrs = fabric
    ids = _make_identities(tmp_path)
    manifest = _write_manifest(tmp_path / "session.toml", ids, addrs, port=29530,
                               swap={"hospital-a": ("hospital-a", addrs[ATTACKER])})
    fake = Identity.new("hospital-a")
    (tmp_path / "fake.crt").write_bytes(fake.certificate_pem)
    (tmp_path / "fake.pem").write_bytes(fake.private_key_pem())
    mitm_log = tmp_path / "mitm.log"
    mitm = _in_ns(names[ATTACKER], sys.executable, str(HERE / "mitm.py"), addrs[ATTACKER],
                  "29530", str(tmp_path / "fake.crt"), str(tmp_path / "fake.pem"),
                  str(mitm_log))
    party_a = _party(names[0], manifest, "hospital-a", "--job", "selftest",
                     "--listen", f"{addrs[0]}:29530")
    try:
        _wait_for(mitm_log.exists, 20, "the man in the middle")
        party_b = _party(names[1], manifest, "hospital-b", "--job", "selftest")
        (rc, _out, err), = _finish([party_b], 90)
        assert rc == 1, err[-2000:]
        assert "refused party 0 (hospital-a)" in err, err[-2000:]
        assert "not one of the session manifest's" in err, err[-2000:]
        assert "Traceback" not in err
        time.sleep(0.5)
        lines = mitm_log.read_text().splitlines()[1:]
        assert lines, "hospital-b never reached the man in the middle"
        assert all(line.endswith(" 0 application bytes") for line in lines), lines
    finally:
        _kill([mitm, party_a])
