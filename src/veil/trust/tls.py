"""Mutually authenticated TLS 1.3 between the members of a session.

Every member holds an identity (a P-256 key and a self-signed certificate, see
:mod:`veil.trust.identity`) and the manifest's list of members' certificates. Both ends of a
connection load that list as their only trust anchors and require a certificate from the other
end, so a host whose certificate is not listed fails the handshake (OpenSSL's "unknown ca").
After the handshake each end also pins the *exact* certificate it expected (SHA-256 fingerprint
of its DER form): a listed member cannot pose as another one, and a man-in-the-middle that
re-terminates TLS cannot present any listed certificate without its private key.

``check_hostname`` is off on purpose: members are named by the fingerprint they present, not by
a DNS name, so moving a party to another address needs a manifest change, not a new certificate.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from veil.errors import AuthenticationError, ConfigurationError

__all__ = ["mutual_context", "peer_fingerprint", "describe_tls_error", "FINGERPRINT_PREFIX"]

FINGERPRINT_PREFIX = "sha256:"


def mutual_context(*, server: bool, cert_path: str | Path, key_path: str | Path,
                   password: bytes | None, trust_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.3-only context that presents our certificate and requires one of ``trust_pem``.

    ``key_path`` may hold the key encrypted under ``password`` (see ``identity.tls_files``), so
    the private key never lies on disk in clear. ``server`` selects the accepting side; it
    issues no session tickets (sessions are long-lived and resumption would skip the
    certificate check).
    """
    # A bare context, not create_default_context: the system's CAs are never trusted here.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=trust_pem.decode("ascii"))
        ctx.load_cert_chain(str(cert_path), str(key_path), password=password)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise ConfigurationError(
            f"could not build the TLS context from {cert_path} and the manifest's certificates "
            f"({type(exc).__name__}: {exc}); check that the identity and the manifest are "
            "Veil's (`veil identity new`)") from exc
    if server:
        ctx.num_tickets = 0
    return ctx


def peer_fingerprint(sock: ssl.SSLSocket | ssl.SSLObject) -> str:
    """``sha256:<hex>`` of the certificate the other end presented."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationError("the peer presented no certificate")
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def describe_tls_error(exc: BaseException) -> str:
    """A readable reason for a failed handshake, from OpenSSL's terse one."""
    text = str(exc).lower()
    if "unknown ca" in text or "certificate verify failed" in text:
        return ("its certificate is not one of the session manifest's (the handshake "
                f"failed: {getattr(exc, 'reason', None) or type(exc).__name__})")
    if "wrong version" in text or "unsupported protocol" in text or "http request" in text:
        return "it does not speak TLS 1.3 (a plaintext or older client)"
    if "eof occurred" in text or isinstance(exc, ssl.SSLEOFError):
        return ("it closed the connection during the TLS handshake (most likely it does not "
                "accept this certificate)")
    if "peer did not return a certificate" in text or "certificate required" in text:
        return "it presented no certificate"
    return f"the TLS handshake failed ({type(exc).__name__}: {exc})"
