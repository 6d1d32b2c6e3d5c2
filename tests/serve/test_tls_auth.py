"""HTTPS, API tokens and owners by identity (issue #14, "The inference server").

A private CA and a server certificate for 127.0.0.1 are generated here (``cryptography``); the
server is a real uvicorn over TLS on loopback, in a thread (and once as ``veil serve``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.serve.conftest import RunningServer

from veil import errors
from veil.errors import AuthenticationError, CertificateError
from veil.serve import Client
from veil.serve.auth import load_secret, new_token, verify_token
from veil.serve.runner import check_transport


def _pki(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA and a server certificate for 127.0.0.1/localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, signer, ca: bool):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                              False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_cert = cert(f"{name} test CA", ca_key, f"{name} test CA", ca_key, True)
    srv_cert = cert("127.0.0.1", srv_key, f"{name} test CA", ca_key, False)
    paths = directory / f"{name}-ca.pem", directory / f"{name}-cert.pem", directory / f"{name}.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca, cert, key = _pki(d, "veil")
    other_ca, _, _ = _pki(d, "other")
    secret = d / "secret"
    load_secret(secret, create=True)
    return {"ca": ca, "cert": cert, "key": key, "other_ca": other_ca, "secret": secret}


@pytest.fixture(scope="module")
def tls_server(pki):
    """TLS + tokens; one context slot in all, so a second client's upload would need eviction."""
    from veil.serve import ServerConfig, create_app

    cfg = ServerConfig(workers=1, queue_size=2, max_contexts=1, contexts_per_client=1,
                       token_secret=load_secret(pki["secret"]))
    app = create_app("linear:digits", config=cfg)
    with RunningServer(app, tls=(pki["cert"], pki["key"])) as srv:
        yield srv


def _token(pki, name: str) -> str:
    return new_token(name, load_secret(pki["secret"]))


def test_https_round_trip_with_a_private_ca(tls_server, pki, client_ctx, digits_data) -> None:
    from veil.serve.evaluator import digits_linear

    x = digits_data[0][:5]
    with Client(tls_server.url, ca=pki["ca"], token=_token(pki, "alice"),
                context=client_ctx) as client:
        got = client.predict(x)
    ev = digits_linear()
    np.testing.assert_allclose(got, x @ ev.weight + ev.bias, atol=1e-2)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"]))) as http:
        resp = http.get(tls_server.url + "/health")
        assert resp.status_code == 200 and resp.http_version == "HTTP/1.1"
        with http.stream("GET", tls_server.url + "/health") as r:
            tls = r.extensions["network_stream"].get_extra_info("ssl_object")
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_client_refuses_an_unknown_certificate(tls_server, pki) -> None:
    for kwargs in ({}, {"ca": pki["other_ca"]}):  # system CAs; another private CA
        with Client(tls_server.url, **kwargs) as client, pytest.raises(CertificateError) as e:
            client.health()
        assert "certificate" in str(e.value) and e.value.phase == "health"
        assert isinstance(e.value, errors.RemoteServiceError)
    with pytest.raises(errors.ConfigurationError, match="not a file"):
        Client(tls_server.url, ca=pki["key"].parent / "missing.pem")


def test_tokens_are_required_and_checked(tls_server, pki) -> None:
    verify = ssl.create_default_context(cafile=str(pki["ca"]))
    good = _token(pki, "alice")
    name, rid, tag = good.split(".")
    forged = f"mallory.{rid}.{tag}"
    altered = f"{name}.{rid}.{tag[:-1]}{'0' if tag[-1] != '0' else '1'}"
    with httpx.Client(base_url=tls_server.url, verify=verify) as http:
        assert http.get("/health").status_code == 200  # health and docs stay open
        assert http.get("/docs").status_code == 200
        for headers in ({}, {"authorization": good}, {"authorization": "Basic YWxpY2U6eA=="},
                        {"authorization": f"Bearer {forged}"},
                        {"authorization": f"Bearer {altered}"},
                        {"authorization": "Bearer " + new_token("alice", os.urandom(32))}):
            resp = http.get("/model", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.headers["www-authenticate"] == "Bearer"
            err = resp.json()["error"]
            assert err["type"] == "AuthenticationError" and err["status"] == 401
            assert tag not in resp.text and load_secret(pki["secret"]).hex() not in resp.text
            assert http.post("/contexts", content=b"x", headers=headers).status_code == 401
        assert http.get("/model", headers={"authorization": f"Bearer {good}"}).status_code == 200
    with Client(tls_server.url, ca=pki["ca"]) as anonymous, pytest.raises(AuthenticationError):
        anonymous.model()
    with Client(tls_server.url, ca=pki["ca"], token=forged) as bad, \
            pytest.raises(AuthenticationError, match="401"):
        bad.model()


def test_contexts_belong_to_the_token_identity(tls_server, pki, client_ctx) -> None:
    from veil import he
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames

    alice = Client(tls_server.url, ca=pki["ca"], token=_token(pki, "alice"), context=client_ctx)
    cid = alice.upload_context()
    verify = ssl.create_default_context(cafile=str(pki["ca"]))
    bob = {"authorization": f"Bearer {_token(pki, 'bob')}"}
    octet = {"content-type": "application/octet-stream"}
    frame = client_ctx.encrypt(np.linspace(0, 1, 2)).serialize()
    body = pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": 2, "windows": 0,
                                        "count": 64}, [frame] * 64)
    with httpx.Client(base_url=tls_server.url, verify=verify, timeout=60) as http:
        # same peer address (127.0.0.1), another identity: bob cannot probe nor use it
        assert http.get(f"/contexts/{cid}", headers=bob).status_code == 404
        resp = http.post("/predict", content=body, headers={**bob, **octet, "X-Veil-Context": cid})
        assert resp.status_code == 404 and resp.json()["error"]["type"] == "UnknownContext"
        # nor evict it: the store's only slot is alice's, in use recently -> 507 for bob
        other = he.CKKSContext.generate(client_ctx.params, galois_keys=False)
        resp = http.post("/contexts", content=other.public().serialize(),
                         headers={**bob, **octet})
        assert resp.status_code == 507, resp.text
        mine = {"authorization": f"Bearer {_token(pki, 'alice')}"}  # another token, same NAME
        assert http.get(f"/contexts/{cid}", headers=mine).status_code == 200
    alice.predict(np.full((1, 64), 0.5))
    alice.close()


def test_plain_http_off_loopback_needs_the_opt_out() -> None:
    with pytest.raises(errors.ConfigurationError, match="--insecure-plain-http"):
        check_transport("0.0.0.0", None, None, False)
    with pytest.raises(errors.ConfigurationError, match="--insecure-plain-http"):
        check_transport("10.1.2.3", None, None, False)
    check_transport("0.0.0.0", None, None, True)
    check_transport("127.0.0.1", None, None, False)
    check_transport("::1", None, None, False)
    with pytest.raises(errors.ConfigurationError, match="go together"):
        check_transport("0.0.0.0", "cert.pem", None, False)
    with pytest.raises(errors.ConfigurationError, match="allow_plain_http"):
        Client("http://10.1.2.3:8000")
    Client("http://10.1.2.3:8000", allow_plain_http=True).close()
    Client("http://localhost:8000").close()
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "serve", "--model", "linear:digits",
                           "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--insecure-plain-http" in proc.stderr, proc.stderr


def test_token_format_and_secret_file(tmp_path) -> None:
    secret_file = tmp_path / "sub" / "secret"
    secret = load_secret(secret_file, create=True)
    assert len(secret) == 32 and (secret_file.stat().st_mode & 0o777) == 0o600
    assert load_secret(secret_file, create=True) == secret  # kept, not replaced
    token = new_token("clinic-7", secret)
    assert verify_token(token, secret) == "clinic-7"
    assert verify_token(token, os.urandom(32)) is None
    assert verify_token(token + "0", secret) is None and verify_token("", secret) is None
    assert new_token("clinic-7", secret) != token
    for bad in ("", "a.b", "x" * 65, "sp ace"):
        with pytest.raises(errors.ConfigurationError):
            new_token(bad, secret)
    os.chmod(secret_file, 0o644)
    with pytest.raises(errors.ConfigurationError, match="chmod 600"):
        load_secret(secret_file)
    with pytest.raises(errors.ConfigurationError, match="does not exist"):
        load_secret(tmp_path / "nope")


def test_cli_serves_https_with_tokens(pki, tmp_path) -> None:
    secret = tmp_path / "cli-secret"
    out = subprocess.run([sys.executable, "-m", "veil.cli", "serve", "token", "new", "alice",
                          "--secret-file", str(secret)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert verify_token(out, load_secret(secret)) == "alice"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "serve", "--model", "linear:digits", "--workers",
         "1", "--port", str(port), "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
         "--token-secret", str(secret)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    url = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(pki["ca"]))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(url + "/health", verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "veil serve --tls-cert did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/model", verify=verify).status_code == 401
        with Client(url, ca=pki["ca"], token=out) as client:
            assert client.model()["name"] == "linear:digits"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).raise_for_status()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
