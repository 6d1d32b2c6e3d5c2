"""Party identities (veil.trust.identity) and `veil identity`: make, save, load, TLS, CLI."""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError, UnsealError
from veil.trust.identity import (
    FINGERPRINT_RE,
    Identity,
    fingerprint_of,
    load_certificate,
    tls_files,
)
from veil.trust.seal import Secret, is_sealed

FAST = {"scrypt_log2_n": 10}
PASS = Secret.passphrase("identity test passphrase")
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.new("alice")


def _openssl_style_fingerprint(pem: bytes) -> str:
    """What `openssl x509 -noout -fingerprint -sha256` prints, computed with cryptography."""
    cert = x509.load_pem_x509_certificate(pem)
    return "sha256 Fingerprint=" + cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _clear_der(ident: Identity) -> bytes:
    return ident.private_key.private_bytes(serialization.Encoding.DER,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


# --- the certificate -------------------------------------------------------------------------


def test_new_identity_certificate(alice: Identity) -> None:
    cert = x509.load_pem_x509_certificate(alice.certificate_pem)
    assert cert.subject.rfc4514_string() == "CN=alice" == cert.issuer.rfc4514_string()
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert cert.signature_hash_algorithm.name == "sha256"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_cert_sign and not ku.key_encipherment
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alice"]
    now = datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert now - datetime.timedelta(minutes=6) < start < now - datetime.timedelta(minutes=4)
    assert abs((end - now) - datetime.timedelta(days=825)) < datetime.timedelta(minutes=1)
    cert.verify_directly_issued_by(cert)  # self-signed, verifies under its own key


def test_ephemeral_and_days_and_names() -> None:
    eph = x509.load_pem_x509_certificate(Identity.ephemeral("local-0").certificate_pem)
    assert eph.not_valid_after_utc - eph.not_valid_before_utc < datetime.timedelta(days=2.01)
    odd = x509.load_pem_x509_certificate(Identity.new("Hospital_A.", days=1).certificate_pem)
    dns = odd.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns.get_values_for_type(x509.DNSName) == ["hospital-a"]
    for bad in ("", "a/b", "a b", "x" * 65, "é"):
        with pytest.raises(ConfigurationError, match="not a valid identity name"):
            Identity.new(bad)
    for days in (0, -1, 3651, True):
        with pytest.raises(ConfigurationError, match="days"):
            Identity.new("a", days=days)


def test_fingerprint_is_stable_and_matches_openssl(alice: Identity) -> None:
    fp = alice.fingerprint
    assert FINGERPRINT_RE.fullmatch(fp) and fp == alice.fingerprint
    assert fp == fingerprint_of(alice.certificate_pem)
    der = x509.load_pem_x509_certificate(alice.certificate_pem).public_bytes(
        serialization.Encoding.DER)
    assert fp == "sha256:" + hashlib.sha256(der).hexdigest()
    openssl = _openssl_style_fingerprint(alice.certificate_pem)
    assert fp == "sha256:" + openssl.split("=", 1)[1].replace(":", "").lower()
    assert Identity.new("alice").fingerprint != fp  # a new key, a new fingerprint


def test_fingerprint_of_bad_pem() -> None:
    for bad in (b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                b"-----END CERTIFICATE-----\n"):
        with pytest.raises(SerializationError):
            fingerprint_of(bad)


def test_repr_hides_the_key(alice: Identity) -> None:
    text = repr(alice)
    assert "alice" in text and alice.fingerprint in text
    assert "PRIVATE" not in text and "EllipticCurve" not in text


def test_key_and_certificate_must_match(alice: Identity) -> None:
    bob = Identity.new("bob")
    with pytest.raises(KeyMismatchError):
        Identity(name="alice", certificate_pem=alice.certificate_pem,
                 private_key=bob.private_key)
    with pytest.raises(ConfigurationError, match="P-256"):
        Identity(name="alice", certificate_pem=alice.certificate_pem,
                 private_key=ec.generate_private_key(ec.SECP384R1()))


# --- save and load ---------------------------------------------------------------------------


@posix_only
def test_save_load_round_trip(tmp_path: Path, alice: Identity) -> None:
    key_path, cert_path = alice.save(tmp_path / "ids", PASS, **FAST)
    assert (key_path.name, cert_path.name) == ("alice.key", "alice.crt")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ids").stat().st_mode) == 0o700
    back = Identity.load(key_path, PASS)
    assert back.name == "alice" and back.fingerprint == alice.fingerprint
    assert back.certificate_pem == alice.certificate_pem
    assert _clear_der(back) == _clear_der(alice)
    raw = key_path.read_bytes()
    assert is_sealed(raw) and _clear_der(alice) not in raw
    assert alice.private_key_pem() not in raw and b"PRIVATE KEY" not in raw
    scalar = alice.private_key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in raw


def test_save_refuses_to_overwrite(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path, PASS, **FAST)
    other = Identity.new("alice")
    with pytest.raises(ConfigurationError, match="already exists"):
        other.save(tmp_path, PASS, **FAST)
    assert Identity.load(tmp_path / "alice.key", PASS).fingerprint == alice.fingerprint
    (tmp_path / "alice.key").unlink()
    with pytest.raises(ConfigurationError, match="alice.crt.*already exists"):
        other.save(tmp_path, PASS, **FAST)  # a stray certificate also blocks
    assert not (tmp_path / "alice.key").exists()
    other.save(tmp_path, PASS, overwrite=True, **FAST)
    assert Identity.load(tmp_path / "alice.key", PASS).fingerprint == other.fingerprint


def test_load_with_wrong_passphrase_or_key_file(tmp_path: Path, alice: Identity) -> None:
    key_path, _ = alice.save(tmp_path, PASS, **FAST)
    with pytest.raises(UnsealError, match="alice.key"):
        Identity.load(key_path, Secret.passphrase("not it"))
    from veil.trust.seal import new_key_file

    kf = Secret.key_file(new_key_file(tmp_path / "k.hex"))
    with pytest.raises(UnsealError):
        Identity.load(key_path, kf)


def test_load_with_a_certificate_of_another_key(tmp_path: Path, alice: Identity) -> None:
    key_path, _ = alice.save(tmp_path / "a", PASS, **FAST)
    _, bob_crt = Identity.new("bob").save(tmp_path / "b", PASS, **FAST)
    with pytest.raises(KeyMismatchError, match="do not belong together"):
        Identity.load(key_path, PASS, cert_path=bob_crt)
    (tmp_path / "a" / "alice.crt").write_bytes(bob_crt.read_bytes())  # swapped file
    with pytest.raises(KeyMismatchError):
        Identity.load(key_path, PASS)


def test_load_certificate_checks(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "c.crt"
    path.write_bytes(alice.certificate_pem)
    assert load_certificate(path) == alice.certificate_pem
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_certificate(tmp_path / "none.crt")
    path.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SerializationError, match="more than"):
        load_certificate(path)
    path.write_bytes(alice.certificate_pem + alice.private_key_pem())
    with pytest.raises(SerializationError, match="private key"):
        load_certificate(path)
    path.write_bytes(alice.certificate_pem * 2)
    with pytest.raises(SerializationError, match="exactly one"):
        load_certificate(path)


# --- TLS -------------------------------------------------------------------------------------


def test_tls_files_load_into_ssl_contexts(tmp_path: Path, alice: Identity) -> None:
    work = tmp_path / "tls"
    work.mkdir(mode=0o700)
    cert_path, key_path, password = tls_files(alice, work)
    assert isinstance(password, bytes) and len(password) == 32
    key_text = key_path.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_text
    assert _clear_der(alice) not in key_text and alice.private_key_pem() not in key_text
    if os.name == "posix":
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for side in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(side)
        ctx.load_cert_chain(str(cert_path), str(key_path), password=password)
        ctx.load_verify_locations(cadata=alice.certificate_pem.decode("ascii"))
        assert any(c.get("subject") == ((("commonName", "alice"),),)
                   for c in ctx.get_ca_certs())
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            str(cert_path), str(key_path), password=b"wrong password")
    _, _, again = tls_files(alice, work)
    assert again != password  # a fresh password each time
    with pytest.raises(ConfigurationError, match="does not exist"):
        tls_files(alice, tmp_path / "missing")


def test_private_key_pem_with_password(alice: Identity) -> None:
    pem = alice.private_key_pem(b"pw")
    assert b"ENCRYPTED" in pem
    back = serialization.load_pem_private_key(pem, password=b"pw")
    assert back.private_numbers() == alice.private_key.private_numbers()
    with pytest.raises(ConfigurationError):
        alice.private_key_pem(b"")


# --- CLI -------------------------------------------------------------------------------------


def test_cli_new_and_show(tmp_path: Path, monkeypatch) -> None:
    from veil.cli import app

    monkeypatch.delenv("VEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("VEIL_KEY_FILE", raising=False)
    monkeypatch.setenv("PARTY_PASS", "cli passphrase")
    runner = CliRunner()
    out = runner.invoke(app, ["identity", "new", "hospital-a", "--dir", str(tmp_path),
                              "--days", "30", "--passphrase-env", "PARTY_PASS"])
    assert out.exit_code == 0, out.output
    assert str(tmp_path / "hospital-a.key") in out.output
    assert str(tmp_path / "hospital-a.crt") in out.output
    ident = Identity.load(tmp_path / "hospital-a.key", Secret.passphrase("cli passphrase"))
    assert f"fingerprint: {ident.fingerprint}" in out.output
    assert "cli passphrase" not in out.output
    shown = runner.invoke(app, ["identity", "show", str(tmp_path / "hospital-a.crt")])
    assert shown.exit_code == 0, shown.output
    assert "name:        hospital-a" in shown.output and ident.fingerprint in shown.output
    assert "(valid)" in shown.output


def test_cli_key_file_and_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    from veil.cli import main

    monkeypatch.delenv("VEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("VEIL_KEY_FILE", raising=False)
    key = tmp_path / "k.hex"
    assert main(["identity", "key-file", "new", str(key)]) == 0
    assert main(["identity", "new", "b", "--dir", str(tmp_path), "--key-file", str(key)]) == 0
    assert Identity.load(tmp_path / "b.key", Secret.key_file(key)).name == "b"
    capsys.readouterr()
    assert main(["identity", "key-file", "new", str(key)]) == 2
    assert "error:" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["identity", "new", "c", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--passphrase-env" in err and "--key-file" in err
    assert main(["identity", "new", "b", "--dir", str(tmp_path), "--key-file", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["identity", "show", str(tmp_path / "nope.crt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_prompts_twice_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    from veil.cli import main

    monkeypatch.delenv("VEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("VEIL_KEY_FILE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["typed pass", "typed pass", "one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["identity", "new", "d", "--dir", str(tmp_path)]) == 0
    assert Identity.load(tmp_path / "d.key", Secret.passphrase("typed pass")).name == "d"
    capsys.readouterr()
    assert main(["identity", "new", "e", "--dir", str(tmp_path)]) == 2
    assert "differ" in capsys.readouterr().err and not (tmp_path / "e.key").exists()


def _context(server: bool, ident: Identity, trusted: bytes, work: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trusted.decode("ascii"))
    cert_path, key_path, password = tls_files(ident, work)
    ctx.load_cert_chain(str(cert_path), str(key_path), password=password)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[object, object]:
    """A TLS handshake over a socket pair: what each side saw of the other (DER or the error)."""
    import socket
    import threading

    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                seen["server"] = s.getpeercert(binary_form=True)
                s.sendall(b"y")
        except (ssl.SSLError, OSError) as exc:
            seen["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            der = c.getpeercert(binary_form=True)
            seen["client"] = der if c.recv(1) == b"y" else ConnectionError("no answer")
    except (ssl.SSLError, OSError) as exc:
        seen["client"] = exc
    finally:
        thread.join(10)
    return seen["server"], seen["client"]


def _fingerprint(der: object) -> str:
    assert isinstance(der, bytes), der
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_two_identities_complete_a_mutual_tls_handshake(tmp_path: Path, alice: Identity) -> None:
    bob = Identity.new("bob")
    trusted = alice.certificate_pem + bob.certificate_pem
    server_saw, client_saw = _handshake(_context(True, alice, trusted, tmp_path),
                                        _context(False, bob, trusted, tmp_path))
    assert _fingerprint(server_saw) == bob.fingerprint
    assert _fingerprint(client_saw) == alice.fingerprint
    stranger = Identity.new("mallory")  # not among the server's trust anchors
    server_saw, client_saw = _handshake(
        _context(True, alice, trusted, tmp_path),
        _context(False, stranger, trusted + stranger.certificate_pem, tmp_path))
    assert isinstance(server_saw, ssl.SSLCertVerificationError), server_saw
    assert isinstance(client_saw, ssl.SSLError | OSError), client_saw
