"""Keys at rest: secrets written to disk are sealed with AES-256-GCM.

A sealed blob is self-describing::

    MAGIC (b"VEILSEAL" + version 1) | kind (1: passphrase, 2: key file)
    | scrypt log2 N, r, p (one byte each; zeros for a key file)
    | salt (16 random bytes) | nonce (12 random bytes) | AES-GCM ciphertext and 16-byte tag

The 256-bit key of each blob is derived from the :class:`Secret` and the blob's salt: with
scrypt (N = 2**15, r = 8, p = 1 by default) from a passphrase, with HKDF-SHA256 from a 32-byte
key file. The associated data is the whole header, ``b"|"`` and the *purpose*, a label such as
``"veil.identity.key"``: a blob opens only with the secret *and* the purpose it was sealed for,
so one kind of sealed file cannot be passed off as another. Any change to any byte makes
:func:`unseal` fail.

Errors: a wrong passphrase or key, a wrong purpose, an altered or truncated blob raise
:class:`~veil.errors.UnsealError`; data that is not a sealed blob, of an unknown version, with
a header out of range (the header is attacker-controlled: scrypt costs beyond the limits below
are refused before any work is done) or larger than ``max_bytes`` raise
:class:`~veil.errors.SerializationError`; bad secrets or arguments raise
:class:`~veil.errors.ConfigurationError`. No message shows a secret or plaintext.
"""

from __future__ import annotations

import getpass
import os
import secrets
import unicodedata
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from veil.errors import ConfigurationError, SerializationError, UnsealError

__all__ = ["Secret", "new_key_file", "seal", "unseal", "is_sealed", "write_sealed",
           "read_sealed", "read_limited", "atomic_write", "MAGIC", "PASSPHRASE_ENV", "KEY_FILE_ENV",
           "SCRYPT_LOG2_N", "MIN_SCRYPT_LOG2_N", "MAX_SCRYPT_LOG2_N", "KEY_FILE_BYTES"]

MAGIC = b"VEILSEAL\x01"
PASSPHRASE_ENV = "VEIL_PASSPHRASE"
KEY_FILE_ENV = "VEIL_KEY_FILE"
KEY_FILE_BYTES = 32
SCRYPT_LOG2_N = 15           # the default cost: 32 MiB and about 0.1 s per seal / unseal
MIN_SCRYPT_LOG2_N = 10       # the least accepted at all (tests and automation only)
MAX_SCRYPT_LOG2_N = 22       # the most accepted (4 GiB with r = 8)

_PREFIX = MAGIC[:-1]
_KIND_PASSPHRASE = 1
_KIND_KEY_FILE = 2
_KIND_NAMES = {_KIND_PASSPHRASE: "passphrase", _KIND_KEY_FILE: "key-file"}
_SCRYPT_R, _SCRYPT_P = 8, 1
_MAX_R, _MAX_P = 16, 4
_MAX_SCRYPT_MEMORY = 4 << 30  # 128 * r * N bytes
_SALT, _NONCE, _TAG = 16, 12, 16
_HEADER = len(MAGIC) + 4 + _SALT + _NONCE
_HKDF_INFO = b"veil.seal/1 key-file"
_MAX_SECRET_FILE = 64 * 1024
_MAX_PURPOSE = 255
_DEFAULT_MAX = 64 << 20
_MAKE_KEY_FILE = "make one with `veil identity key-file new PATH`"
_OPTIONS = ("passphrase=..., passphrase_env=VAR, passphrase_file=PATH or key_file=PATH "
            f"(CLI: --passphrase-env, --passphrase-file, --key-file), or set {PASSPHRASE_ENV} "
            f"or {KEY_FILE_ENV}")


class Secret:
    """Where the key-encryption key comes from: a passphrase (scrypt) or a 32-byte key file (HKDF).

    Build one with :meth:`passphrase`, :meth:`key_file`, :meth:`from_env` or :meth:`resolve`.
    The secret never appears in ``repr``, messages or pickles (a ``Secret`` cannot be pickled).
    """

    __slots__ = ("_kind", "_material", "_label")

    def __init__(self, kind: str, material: bytes, label: str) -> None:
        if kind not in _KIND_NAMES.values() or not material:
            raise ConfigurationError("build a Secret with Secret.passphrase(), "
                                     "Secret.key_file(), Secret.from_env() or Secret.resolve()")
        self._kind = kind
        self._material = bytes(material)
        self._label = label

    @classmethod
    def passphrase(cls, text: str | bytes) -> Secret:
        """A passphrase (``str`` is NFC-normalised and UTF-8 encoded); empty is refused."""
        if isinstance(text, str):
            data = unicodedata.normalize("NFC", text).encode("utf-8")
        elif isinstance(text, bytes | bytearray):
            data = bytes(text)
        else:
            raise ConfigurationError(
                f"a passphrase must be str or bytes, got {type(text).__name__}")
        if not data:
            raise ConfigurationError("the passphrase is empty; give a non-empty passphrase")
        return cls("passphrase", data, "passphrase")

    @classmethod
    def key_file(cls, path: str | os.PathLike) -> Secret:
        """The 32-byte key (64 hex digits) in ``path``, which must be mode 0600 on POSIX."""
        p = Path(path)
        text = _read_small(p, "key file", _MAKE_KEY_FILE).decode("ascii", "replace").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != KEY_FILE_BYTES or len(text) != 2 * KEY_FILE_BYTES:
            raise ConfigurationError(
                f"key file {str(p)!r} does not hold {KEY_FILE_BYTES} bytes as "
                f"{2 * KEY_FILE_BYTES} hex digits; {_MAKE_KEY_FILE}")
        if os.name == "posix" and p.stat().st_mode & 0o077:
            raise ConfigurationError(
                f"key file {str(p)!r} has mode {p.stat().st_mode & 0o777:o}: other users may "
                f"read it; run `chmod 600 {p}`")
        return cls("key-file", key, f"key-file {str(p)!r}")

    @classmethod
    def from_env(cls, var: str = PASSPHRASE_ENV) -> Secret:
        """The passphrase in environment variable ``var``."""
        value = os.environ.get(var)
        if not value:
            raise ConfigurationError(
                f"environment variable {var} is not set or empty; set it to the passphrase, "
                "or name another source")
        return cls.passphrase(value)

    @classmethod
    def resolve(cls, *, passphrase: str | None = None, passphrase_env: str | None = None,
                passphrase_file: str | os.PathLike | None = None,
                key_file: str | os.PathLike | None = None, prompt: bool = False) -> Secret:
        """The one secret named: an argument, else ``VEIL_PASSPHRASE`` / ``VEIL_KEY_FILE``, else
        (with ``prompt``) a passphrase typed at a ``getpass`` prompt.

        ``passphrase_file`` is the first line of that file, without its line break. Several
        sources, or none, raise :class:`~veil.errors.ConfigurationError` listing the options.
        """
        given = {name: value for name, value in (
            ("passphrase", passphrase), ("passphrase_env", passphrase_env),
            ("passphrase_file", passphrase_file), ("key_file", key_file)) if value is not None}
        if not given:
            given = {name: value for name, value in (
                ("passphrase_env", PASSPHRASE_ENV if os.environ.get(PASSPHRASE_ENV) else None),
                ("key_file", os.environ.get(KEY_FILE_ENV) or None)) if value is not None}
            if len(given) > 1:
                raise ConfigurationError(
                    f"both {PASSPHRASE_ENV} and {KEY_FILE_ENV} are set; unset one of them")
        if len(given) > 1:
            raise ConfigurationError(
                f"give exactly one passphrase or key source, got {', '.join(given)}; "
                f"choose one of {_OPTIONS}")
        if not given:
            if prompt:
                return cls.passphrase(getpass.getpass("Passphrase: "))
            raise ConfigurationError(f"no passphrase or key given; pass one of {_OPTIONS}")
        (name, value), = given.items()
        if name == "passphrase":
            return cls.passphrase(value)
        if name == "passphrase_env":
            return cls.from_env(value)
        if name == "key_file":
            return cls.key_file(value)
        return _passphrase_from_file(Path(value))

    @property
    def kind(self) -> str:
        """``"passphrase"`` or ``"key-file"``."""
        return self._kind

    def __repr__(self) -> str:
        return f"Secret({self._label})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a Secret cannot be pickled; build it again where it is needed")


def _passphrase_from_file(path: Path) -> Secret:
    raw = _read_small(path, "passphrase file", "write the passphrase on its first line")
    try:
        line = raw.decode("utf-8").splitlines()[0] if raw else ""
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"passphrase file {str(path)!r} is not UTF-8 text; write the passphrase on its "
            "first line") from None
    if not line:
        raise ConfigurationError(
            f"passphrase file {str(path)!r} has an empty first line; write the passphrase there")
    return Secret.passphrase(line)


def _read_small(path: Path, what: str, fix: str) -> bytes:
    """A small file's bytes; every failure is a ConfigurationError naming the path."""
    try:
        info = path.stat()
        if not path.is_file():
            raise ConfigurationError(f"{what} {str(path)!r} is not a file; {fix}")
        if info.st_size > _MAX_SECRET_FILE:
            raise ConfigurationError(
                f"{what} {str(path)!r} is {info.st_size} bytes, more than "
                f"{_MAX_SECRET_FILE}; check the path ({fix})")
        with path.open("rb") as fh:
            return fh.read(_MAX_SECRET_FILE)
    except FileNotFoundError:
        raise ConfigurationError(f"{what} {str(path)!r} does not exist; {fix}") from None
    except OSError as exc:
        raise ConfigurationError(
            f"could not read {what} {str(path)!r} ({exc.strerror or exc}); check its "
            "permissions") from exc


def new_key_file(path: str | os.PathLike) -> Path:
    """Write 32 random bytes as hex to a new file ``path`` (mode 0600); never overwrites."""
    p = Path(path)
    return atomic_write(p, secrets.token_hex(KEY_FILE_BYTES).encode("ascii") + b"\n",
                        mode=0o600, overwrite=False)


# --- sealing ---------------------------------------------------------------------------------


def _check_purpose(purpose: Any) -> bytes:
    if not isinstance(purpose, str) or not purpose or not purpose.isprintable():
        raise ConfigurationError(
            f"purpose must be a non-empty printable label such as 'veil.identity.key', got "
            f"{purpose!r}")
    data = purpose.encode("utf-8")
    if len(data) > _MAX_PURPOSE:
        raise ConfigurationError(f"purpose is {len(data)} bytes; use at most {_MAX_PURPOSE}")
    return data


def _check_scrypt(log2_n: int, r: int, p: int) -> str | None:
    """What is wrong with these scrypt parameters, or ``None``."""
    if not MIN_SCRYPT_LOG2_N <= log2_n <= MAX_SCRYPT_LOG2_N:
        return f"scrypt log2 N = {log2_n} (allowed {MIN_SCRYPT_LOG2_N}..{MAX_SCRYPT_LOG2_N})"
    if not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        return f"scrypt r = {r}, p = {p} (allowed r 1..{_MAX_R}, p 1..{_MAX_P})"
    if 128 * r * (1 << log2_n) > _MAX_SCRYPT_MEMORY:
        return f"scrypt log2 N = {log2_n} with r = {r} (needs more than 4 GiB)"
    return None


def _derive(secret: Secret, header: bytes) -> bytes:
    salt = header[len(MAGIC) + 4:len(MAGIC) + 4 + _SALT]
    if secret._kind == "passphrase":
        log2_n, r, p = header[len(MAGIC) + 1:len(MAGIC) + 4]
        return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(secret._material)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                info=_HKDF_INFO).derive(secret._material)


def seal(data: bytes, secret: Secret, *, purpose: str,
         scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """``data`` encrypted and authenticated under ``secret`` for ``purpose``.

    ``scrypt_log2_n`` (passphrases only) is for tests and automation that cannot afford the
    default cost of 2**15: it accepts 10 to 22; anything below the default weakens a
    passphrase against guessing, so leave it alone for real secrets.
    """
    if not isinstance(secret, Secret):
        raise ConfigurationError(f"secret must be a veil.trust.seal.Secret, got "
                                 f"{type(secret).__name__}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigurationError(f"only bytes can be sealed, got {type(data).__name__}")
    label = _check_purpose(purpose)
    if secret.kind == "passphrase":
        if isinstance(scrypt_log2_n, bool) or not isinstance(scrypt_log2_n, int):
            raise ConfigurationError(f"scrypt_log2_n must be an int, got {scrypt_log2_n!r}")
        problem = _check_scrypt(scrypt_log2_n, _SCRYPT_R, _SCRYPT_P)
        if problem:
            raise ConfigurationError(f"{problem}; leave scrypt_log2_n at its default "
                                     f"{SCRYPT_LOG2_N}")
        params = bytes((_KIND_PASSPHRASE, scrypt_log2_n, _SCRYPT_R, _SCRYPT_P))
    else:
        params = bytes((_KIND_KEY_FILE, 0, 0, 0))
    header = MAGIC + params + secrets.token_bytes(_SALT) + secrets.token_bytes(_NONCE)
    try:
        body = AESGCM(_derive(secret, header)).encrypt(header[-_NONCE:], bytes(data),
                                                       header + b"|" + label)
    except OverflowError as exc:
        raise ConfigurationError(f"{len(data)} bytes are too many to seal at once; seal "
                                 "less than 2 GiB") from exc
    return header + body


def is_sealed(blob: bytes) -> bool:
    """Whether ``blob`` starts like a sealed blob of this version (nothing is decrypted)."""
    return isinstance(blob, bytes | bytearray | memoryview) and bytes(blob[:len(MAGIC)]) == MAGIC


def _parse_header(blob: bytes, max_bytes: int) -> tuple[int, bytes]:
    """The blob's kind and header, after every check that needs no secret."""
    if len(blob) > max_bytes:
        raise SerializationError(
            f"sealed data is {len(blob)} bytes, more than max_bytes={max_bytes}; pass a larger "
            "max_bytes if the file is expected to be that big")
    head = blob[:len(_PREFIX)]
    if not head or _PREFIX[:len(head)] != head:
        raise SerializationError(
            "this is not sealed data (it does not start with VEILSEAL); give a file written by "
            "veil.trust.seal")
    if len(blob) > len(_PREFIX) and blob[len(_PREFIX)] != MAGIC[-1]:
        raise SerializationError(
            f"sealed data of format version {blob[len(_PREFIX)]} is not supported (this Veil "
            f"reads version {MAGIC[-1]}); open it with the Veil that wrote it")
    if len(blob) < _HEADER + _TAG:
        raise UnsealError(f"sealed data is truncated ({len(blob)} bytes, at least "
                          f"{_HEADER + _TAG} needed); restore the file from a good copy")
    kind, log2_n, r, p = blob[len(MAGIC):len(MAGIC) + 4]
    if kind == _KIND_PASSPHRASE:
        problem = _check_scrypt(log2_n, r, p)
        if problem:
            raise SerializationError(f"sealed data asks for {problem}; the file is damaged "
                                     "or was not written by Veil")
    elif kind != _KIND_KEY_FILE or (log2_n, r, p) != (0, 0, 0):
        raise SerializationError(f"sealed data has an unknown kind {kind} or bad key "
                                 "parameters; the file is damaged or was not written by Veil")
    return kind, bytes(blob[:_HEADER])


def unseal(blob: bytes, secret: Secret, *, purpose: str, max_bytes: int = _DEFAULT_MAX) -> bytes:
    """The data :func:`seal` sealed under ``secret`` for ``purpose``."""
    if not isinstance(secret, Secret):
        raise ConfigurationError(f"secret must be a veil.trust.seal.Secret, got "
                                 f"{type(secret).__name__}")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SerializationError(f"sealed data must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    label = _check_purpose(purpose)
    kind, header = _parse_header(blob, max_bytes)
    if _KIND_NAMES[kind] != secret.kind:
        raise UnsealError(
            f"this {purpose!r} data was sealed with a {_KIND_NAMES[kind]} but a {secret.kind} "
            f"was given; give the {_KIND_NAMES[kind]} it was sealed with")
    try:
        return AESGCM(_derive(secret, header)).decrypt(header[-_NONCE:], blob[_HEADER:],
                                                       header + b"|" + label)
    except InvalidTag:
        raise UnsealError(
            f"could not open the sealed {purpose!r} data: wrong {secret.kind}, a file sealed "
            "for another purpose, or the file was altered or truncated") from None


# --- files -----------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o600,
                 overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, with ``mode``.

    Readers see the old file or the new one, never a part. With ``overwrite=False`` an existing
    ``path`` is refused (:class:`~veil.errors.ConfigurationError`) and never replaced.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise ConfigurationError(f"folder {str(p.parent)!r} does not exist; create it first")
    if not overwrite and os.path.lexists(p):
        raise _exists(p)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            if os.name == "posix":
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if fd >= 0:
                os.close(fd)
        if overwrite:
            os.replace(tmp, p)
        else:
            _link_new(tmp, p)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return p


def _exists(p: Path) -> ConfigurationError:
    return ConfigurationError(f"{str(p)!r} already exists; refusing to overwrite it (move it "
                              "away, or choose another path)")


def _link_new(tmp: Path, p: Path) -> None:
    """Give ``tmp`` the name ``p`` only if ``p`` does not exist (atomically where possible)."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise _exists(p) from None
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(p):
            raise _exists(p) from None
        os.replace(tmp, p)


def write_sealed(path: str | os.PathLike, data: bytes, secret: Secret, *, purpose: str,
                 overwrite: bool = True, **kw: Any) -> Path:
    """Seal ``data`` (keywords as :func:`seal`) into file ``path``, atomically, mode 0600."""
    return atomic_write(path, seal(data, secret, purpose=purpose, **kw), mode=0o600,
                        overwrite=overwrite)


def read_limited(path: str | os.PathLike, what: str, max_bytes: int, *,
                 fix: str = "check the path") -> bytes:
    """The bytes of file ``path`` (a ``what``), its size checked against ``max_bytes`` before
    anything is read (and again after: it may grow meanwhile). ``fix``: the hint for a missing
    file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ConfigurationError(f"{what} {str(p)!r} is not a regular file; {fix}")
        if size > max_bytes:
            raise SerializationError(
                f"{what} {str(p)!r} is {size} bytes, more than max_bytes={max_bytes}; check "
                "that the path names the file meant")
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigurationError(f"{what} {str(p)!r} does not exist; {fix}") from None
    except OSError as exc:
        raise ConfigurationError(f"could not read {what} {str(p)!r} ({exc.strerror or exc}); "
                                 "check its permissions") from exc
    if len(data) > max_bytes:
        raise SerializationError(f"{what} {str(p)!r} grew past {max_bytes} bytes while being "
                                 "read")
    return data


def read_sealed(path: str | os.PathLike, secret: Secret, *, purpose: str,
                max_bytes: int = _DEFAULT_MAX) -> bytes:
    """The data sealed in file ``path``; its size is checked before anything is read."""
    p = Path(path)
    blob = read_limited(p, "sealed file", max_bytes)
    try:
        return unseal(blob, secret, purpose=purpose, max_bytes=max_bytes)
    except (UnsealError, SerializationError) as exc:
        raise type(exc)(f"{p}: {exc}") from exc
