"""Party identities: a P-256 key and a self-signed certificate naming the party.

Each member of a multi-host session makes its own identity once (``veil identity new NAME``),
keeps the private key (sealed at rest with :mod:`veil.trust.seal`, never in clear on disk) and
hands its certificate and fingerprint to the others, who list them in the session manifest
(:mod:`veil.trust.manifest`). The certificate is its own trust anchor (``CA:TRUE``), so peers
load the manifest's certificates as the only CAs of their TLS contexts (:mod:`veil.trust.tls`).

Files: ``NAME.key`` holds the PKCS#8 DER key sealed for purpose ``"veil.identity.key"`` (mode
0600), ``NAME.crt`` the certificate in PEM (mode 0644). A fingerprint is ``"sha256:"`` and the
lowercase hex SHA-256 of the certificate's DER form, the value ``openssl x509 -fingerprint
-sha256`` prints (without its colons).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError
from veil.trust.seal import Secret, atomic_write, read_limited, read_sealed, write_sealed

__all__ = ["Identity", "fingerprint_of", "load_certificate", "tls_files", "FINGERPRINT_RE",
           "KEY_PURPOSE", "MAX_CERTIFICATE_BYTES", "DEFAULT_DAYS", "MAX_DAYS"]

FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
KEY_PURPOSE = "veil.identity.key"
MAX_CERTIFICATE_BYTES = 64 * 1024
DEFAULT_DAYS = 825
MAX_DAYS = 3650

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_KEY_FILE = 64 * 1024
_BACKDATE = datetime.timedelta(minutes=5)
_NAME_RULE = "use 1 to 64 letters, digits, '_', '.' or '-'"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(f"{name!r} is not a valid identity name; {_NAME_RULE}")
    return name


def _dns_name(name: str) -> str:
    """``name`` as a DNS name: lower case, '-' for other characters, labels of 1..63."""
    cleaned = re.sub(r"[^a-z0-9.-]", "-", name.lower())
    labels = [label.strip("-")[:63].strip("-") for label in cleaned.split(".")]
    return ".".join(label for label in labels if label) or "veil-party"


def _parse_pem(certificate_pem: Any) -> x509.Certificate:
    if not isinstance(certificate_pem, bytes | bytearray):
        raise SerializationError(
            f"a certificate must be PEM bytes, got {type(certificate_pem).__name__}")
    if len(certificate_pem) > MAX_CERTIFICATE_BYTES:
        raise SerializationError(
            f"the certificate is {len(certificate_pem)} bytes, more than "
            f"{MAX_CERTIFICATE_BYTES}; give one PEM certificate")
    if b"PRIVATE KEY" in certificate_pem:
        raise SerializationError(
            "this PEM holds a private key, not only a certificate; give the .crt file and keep "
            "the key to its owner")
    try:
        certs = x509.load_pem_x509_certificates(bytes(certificate_pem))
    except ValueError as exc:
        raise SerializationError(
            f"not a PEM certificate ({exc}); give a file that starts with -----BEGIN "
            "CERTIFICATE-----") from exc
    if len(certs) != 1:
        raise SerializationError(f"the PEM holds {len(certs)} certificates; give exactly one")
    return certs[0]


def fingerprint_of(certificate_pem: bytes) -> str:
    """``"sha256:"`` + lowercase hex SHA-256 of the DER form of the one certificate in the PEM."""
    der = _parse_pem(certificate_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_certificate(path: str | os.PathLike) -> bytes:
    """The PEM certificate in file ``path`` (at most 64 KiB), checked to be one certificate."""
    p = Path(path)
    raw = read_limited(p, "certificate", MAX_CERTIFICATE_BYTES,
                       fix="check the path or make an identity with `veil identity new NAME`")
    try:
        cert = _parse_pem(raw)
    except SerializationError as exc:
        raise SerializationError(f"{p}: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_certificate(name: str, key: ec.EllipticCurvePrivateKey, days: int) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(_dns_name(name))]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Identity:
    """A party's name, self-signed certificate (PEM) and P-256 private key.

    Make one with :meth:`new` (or :meth:`ephemeral` for a local session), keep it with
    :meth:`save` and get it back with :meth:`load`. The key must match the certificate
    (:class:`~veil.errors.KeyMismatchError` otherwise); ``repr`` never shows the key.
    """

    name: str
    certificate_pem: bytes = field(repr=False)
    private_key: Any = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey) or \
                not isinstance(self.private_key.curve, ec.SECP256R1):
            raise ConfigurationError(
                f"an identity's key must be a P-256 (SECP256R1) private key, got "
                f"{type(self.private_key).__name__}; make one with Identity.new(name)")
        cert = _parse_pem(self.certificate_pem)
        if _public_der(cert.public_key()) != _public_der(self.private_key.public_key()):
            raise KeyMismatchError(
                f"the private key of identity {self.name!r} does not belong to its certificate "
                f"({fingerprint_of(self.certificate_pem)}); give the certificate made with "
                "this key")

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, fingerprint={self.fingerprint!r})"

    @classmethod
    def new(cls, name: str, *, days: int = DEFAULT_DAYS) -> Identity:
        """A fresh P-256 key and a certificate for ``name`` valid for ``days`` (1..3650)."""
        _check_name(name)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise ConfigurationError(
                f"days must be a whole number from 1 to {MAX_DAYS}, got {days!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(name=name, certificate_pem=_make_certificate(name, key, days),
                   private_key=key)

    @classmethod
    def ephemeral(cls, name: str) -> Identity:
        """An identity for one local session: as :meth:`new`, valid for 2 days."""
        return cls.new(name, days=2)

    @property
    def fingerprint(self) -> str:
        """``"sha256:"`` + lowercase hex SHA-256 of the certificate's DER form."""
        return fingerprint_of(self.certificate_pem)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate as a ``cryptography`` object (validity, subject, extensions)."""
        return _parse_pem(self.certificate_pem)

    def private_key_pem(self, password: bytes | None = None) -> bytes:
        """The key as PKCS#8 PEM; encrypted under ``password`` if one is given.

        The encrypted form is what :meth:`ssl.SSLContext.load_cert_chain` reads with
        ``password=``; see :func:`tls_files`.
        """
        if password is None:
            encryption: Any = serialization.NoEncryption()
        elif isinstance(password, bytes) and password:
            encryption = serialization.BestAvailableEncryption(password)
        else:
            raise ConfigurationError("password must be non-empty bytes, or None for a key in "
                                     "clear")
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8, encryption)

    def save(self, directory: str | os.PathLike, secret: Secret, *, overwrite: bool = False,
             **seal_kw: Any) -> tuple[Path, Path]:
        """Write ``NAME.key`` (sealed, 0600) and ``NAME.crt`` (0644) into ``directory``.

        The folder is made (0700) if missing. Existing files are refused
        (:class:`~veil.errors.ConfigurationError`) unless ``overwrite=True``. ``seal_kw`` go to
        :func:`veil.trust.seal.seal` (e.g. ``scrypt_log2_n`` for tests).
        """
        folder = Path(directory)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = folder / f"{self.name}.key", folder / f"{self.name}.crt"
        if not overwrite:
            for p in (key_path, cert_path):
                if os.path.lexists(p):
                    raise ConfigurationError(
                        f"{str(p)!r} already exists; refusing to overwrite an identity (move "
                        "it away, choose another name or folder, or pass overwrite=True)")
        der = self.private_key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        write_sealed(key_path, der, secret, purpose=KEY_PURPOSE, overwrite=overwrite,
                     **seal_kw)
        try:
            atomic_write(cert_path, self.certificate_pem, mode=0o644, overwrite=overwrite)
        except BaseException:
            key_path.unlink(missing_ok=True)  # never leave a key without its certificate
            raise
        return key_path, cert_path

    @classmethod
    def load(cls, key_path: str | os.PathLike, secret: Secret,
             cert_path: str | os.PathLike | None = None) -> Identity:
        """The identity saved at ``key_path`` (certificate: ``cert_path``, else the ``.crt``
        beside it); the key must match the certificate."""
        key_file = Path(key_path)
        crt = Path(cert_path) if cert_path is not None else key_file.with_suffix(".crt")
        cert_pem = load_certificate(crt)
        der = read_sealed(key_file, secret, purpose=KEY_PURPOSE, max_bytes=_MAX_KEY_FILE)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError) as exc:
            raise SerializationError(
                f"{key_file}: the sealed data is not a PKCS#8 private key; give a key file "
                "made by `veil identity new`") from exc
        cert = x509.load_pem_x509_certificate(cert_pem)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if not _NAME.fullmatch(name):
            raise SerializationError(
                f"{crt}: the certificate's common name {name!r} is not an identity name; give "
                "a certificate made by `veil identity new`")
        try:
            return cls(name=name, certificate_pem=cert_pem, private_key=key)
        except KeyMismatchError as exc:
            raise KeyMismatchError(f"{key_file} and {crt} do not belong together: {exc}") \
                from exc


def tls_files(identity: Identity, directory: str | os.PathLike) -> tuple[Path, Path, bytes]:
    """Files for :meth:`ssl.SSLContext.load_cert_chain`: ``(cert_path, key_path, password)``.

    Writes the certificate and the private key, encrypted (PKCS#8, best available encryption)
    under a fresh random 32-byte ``password``, into ``directory``, which the caller makes (mode
    0700) and removes afterwards. The key never lies on disk in clear; keep the password in
    memory only.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigurationError(f"folder {str(folder)!r} does not exist; create it (mode "
                                 "0700) before asking for TLS files")
    password = secrets.token_bytes(32)
    cert_path = atomic_write(folder / f"{identity.name}.crt", identity.certificate_pem,
                             mode=0o644)
    key_path = atomic_write(folder / f"{identity.name}.tls-key.pem",
                            identity.private_key_pem(password), mode=0o600)
    return cert_path, key_path, password
