"""Append-only, hash-chained audit log of releases (JSON lines) and its verifier.

Every line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous line's
``hash``; 64 zeros for the first) and ``hash`` = SHA-256 over ``prev`` and the canonical JSON of
the entry without ``hash`` (HMAC-SHA-256 with ``key`` when one is given). Editing any field,
reordering or deleting lines breaks the chain; :func:`verify` reports the first broken line.

Truncating the *tail* cannot be seen from the chain alone, so every append also rewrites an
anchor ``<file>.head`` (``{"seq": .., "hash": ..}``, atomically; with a key also ``"mac"``, an
HMAC of the anchor itself). :func:`verify` compares the log's last entry with it, and an append
refuses to extend a log that does not match its anchor (so a truncation is not laundered by
the next release).

What each mode proves:

* **keyed** (``key=``): only key holders can write entries *or* anchors. A keyed log whose
  anchor is missing, unauthenticated or for another entry fails :func:`verify`. What a key
  cannot stop is a *rollback* of both files to an older copy; compare ``head=`` with a head hash
  kept elsewhere to detect that.
* **unkeyed**: the chain proves only internal consistency. Anyone who can write the files can
  recompute a consistent chain and anchor after an edit; it detects accidents, and tampering by
  someone who cannot also replace a head hash you kept elsewhere.

**The key at rest.** :func:`new_key_file` writes a fresh 32-byte key sealed (AES-256-GCM, purpose
``"veil.audit.key"``) under a :class:`~veil.trust.seal.Secret`, mode 0600; :func:`read_key_file`
opens it. A plain key file (its raw bytes, as made by ``head -c 32 /dev/urandom``) is still read,
with a :class:`UserWarning` that it is unencrypted; :func:`seal_key_file` seals it in place
(same key: logs written with it still verify).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import ConfigurationError

if TYPE_CHECKING:
    from veil.trust.seal import Secret

__all__ = ["AuditLog", "AuditReport", "verify", "new_key_file", "read_key_file",
           "seal_key_file", "GENESIS", "MIN_KEY_BYTES", "KEY_BYTES", "KEY_PURPOSE",
           "MAX_KEY_FILE_BYTES"]

GENESIS = "0" * 64
MIN_KEY_BYTES = 16
KEY_BYTES = 32  # what new_key_file draws
KEY_PURPOSE = "veil.audit.key"
MAX_KEY_FILE_BYTES = 4096
_RESERVED = ("seq", "prev", "hash")
_MAX_LINE = 1 << 20
_MAX_ANCHOR = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ANCHOR_LABEL = b"veil-audit-anchor\n"


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(prev: str, entry: Mapping[str, Any], key: bytes | None) -> str:
    body = prev.encode() + b"\n" + _canonical({k: v for k, v in entry.items() if k != "hash"})
    if key is not None:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def _anchor_mac(seq: int, digest: str, key: bytes) -> str:
    """HMAC of the anchor (distinct from entry hashes, so an entry's hash is not an anchor)."""
    return hmac.new(key, _ANCHOR_LABEL + f"{seq}\n{digest}".encode(), hashlib.sha256).hexdigest()


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _check_key(key: bytes | None) -> None:
    if key is not None and (not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES):
        raise ConfigurationError(
            f"audit key must be at least {MIN_KEY_BYTES} random bytes (os.urandom(32)), got "
            + (f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__))


@dataclass(frozen=True)
class _Anchor:
    seq: int
    digest: str
    mac: str | None


def _read_anchor(path: Path) -> _Anchor | None:
    """The anchor of log ``path``; ``None`` when absent; ConfigurationError when damaged."""
    head = _head_path(path)
    try:
        with open(head, "rb") as fh:
            raw = fh.read(_MAX_ANCHOR + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read the anchor {head}: {exc.strerror}") from exc
    try:
        if len(raw) > _MAX_ANCHOR:
            raise ValueError("too long")
        doc = json.loads(raw)
        seq, digest, mac = doc["seq"], doc["hash"], doc.get("mac")
        if type(seq) is not int or seq < 0 or not _is_hex64(digest) or not (
                mac is None or _is_hex64(mac)):
            raise ValueError("wrong field types")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigurationError(f"{head}: damaged anchor file") from exc
    return _Anchor(seq, digest, mac)


class AuditLog:
    """Appends release records to ``path``; each record is chained to the one before it."""

    def __init__(self, path: str | os.PathLike[str], *, key: bytes | None = None) -> None:
        _check_key(key)
        self.path = Path(path)
        self.key = key

    def check(self) -> None:
        """Refuse (ConfigurationError) a log whose last entry does not match its anchor.

        Cheap (reads the tail and the anchor only); call it before a release so that a log that
        cannot be appended to is reported before anything is computed.
        """
        if self.path.exists() and not self.path.is_file():
            raise ConfigurationError(f"audit log {self.path} is not a regular file")
        if not self.path.exists():
            self._check_anchor(None, None)
            return
        with open(self.path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                self._check_anchor(*self._last(fh))
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` (JSON-serialisable, no keys seq/prev/hash); returns the entry."""
        clash = [k for k in _RESERVED if k in record]
        if clash:
            raise ConfigurationError(f"audit record may not set reserved fields {clash}")
        entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        entry.update(record)
        try:
            _canonical(entry)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"audit record is not plain JSON: {exc}") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                last = self._last(fh)
                self._check_anchor(*last)
                seq, prev = (0, GENESIS) if last[0] is None else (last[0] + 1, last[1])
                entry = {"seq": seq, "prev": prev, **entry}
                entry["hash"] = _digest(prev, entry, self.key)
                fh.seek(0, os.SEEK_END)
                fh.write(_canonical(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                self._write_head(entry["seq"], entry["hash"])
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def _damaged(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"audit log {self.path}: {what}; nothing was appended. Run `veil audit verify "
            f"{self.path}` and keep the damaged files for investigation before starting a new log")

    def _last(self, fh: Any) -> tuple[int | None, str | None, str | None]:
        """``(seq, hash, prev)`` of the last entry, or ``(None, None, None)`` for an empty log."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return None, None, None
        fh.seek(max(0, size - _MAX_LINE))
        lines = fh.read().splitlines()
        try:
            last = json.loads(lines[-1])
            seq, digest, prev = last["seq"], last["hash"], last["prev"]
            if type(seq) is not int or not _is_hex64(digest) or not _is_hex64(prev):
                raise ValueError("wrong field types")
            if self.key is not None and not hmac.compare_digest(
                    _digest(prev, last, self.key), digest):
                raise ValueError("hash mismatch")
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
            raise self._damaged("the log ends in a damaged line") from exc
        return seq, digest, prev

    def _check_anchor(self, seq: int | None, digest: str | None, prev: str | None = None) -> None:
        anchor = _read_anchor(self.path)
        if seq is None:
            if anchor is not None:
                raise self._damaged(f"the log is empty but its anchor names entry {anchor.seq} "
                                    "(the log was truncated or replaced)")
            return
        if anchor is None:
            raise self._damaged(f"the anchor {_head_path(self.path)} is missing (entries may "
                                "have been removed from the end)")
        if self.key is not None and not (anchor.mac and hmac.compare_digest(
                anchor.mac, _anchor_mac(anchor.seq, anchor.digest, self.key))):
            raise self._damaged("the anchor is not authenticated by this key (rewritten without "
                                "the key, or another key)")
        at_tail = anchor.seq == seq and hmac.compare_digest(anchor.digest, str(digest))
        # an append interrupted between writing the entry and replacing the anchor
        one_behind = anchor.seq + 1 == seq and hmac.compare_digest(anchor.digest, str(prev))
        if not (at_tail or one_behind):
            raise self._damaged(f"its last entry {seq} does not match the anchor (entry "
                                f"{anchor.seq}): entries were removed from the end or rewritten")

    def _write_head(self, seq: int, digest: str) -> None:
        head = _head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        doc: dict[str, Any] = {"seq": seq, "hash": digest}
        if self.key is not None:
            doc["mac"] = _anchor_mac(seq, digest, self.key)
        with open(tmp, "w") as fh:
            fh.write(json.dumps(doc) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, head)


@dataclass
class AuditReport:
    """Outcome of :func:`verify`: ``ok`` only when the chain and the anchor both check out.

    ``keyed``: verified with an HMAC key (an unkeyed log proves only internal consistency).
    ``anchored``: the last entry was compared with an anchor (the ``.head`` file or ``head=``).
    """

    entries: int = 0
    head: str = GENESIS
    anchored: bool = False
    keyed: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    path: str | os.PathLike[str], *, key: bytes | None = None, head: str | None = None
) -> AuditReport:
    """Check the whole chain of ``path`` and its anchor (or the given ``head`` hash).

    With ``key`` the log must have been written with that key, and its anchor must exist and be
    authenticated by it (unless ``head`` is given): a keyed log whose tail was cut and whose
    anchor was deleted or rewritten fails. Without ``key`` a missing anchor is reported by
    ``anchored=False`` only, and ``ok`` means internally consistent, nothing more.
    """
    _check_key(key)
    if head is not None and not _is_hex64(head):
        raise ConfigurationError(
            f"head must be the 64 hex digits of the last entry's hash, got {head!r}")
    path = Path(path)
    report = AuditReport(keyed=key is not None)
    if not path.exists():
        report.problems.append(f"{path} does not exist")
        return report
    if not path.is_file():
        report.problems.append(f"{path} is not a regular file (give the audit log's path)")
        return report
    try:
        anchor = _read_anchor(path) if head is None else None
    except ConfigurationError as exc:
        report.problems.append(str(exc))
        return report
    if key is None and anchor is not None and anchor.mac is not None:
        report.problems.append("the log was written with an HMAC key (its anchor carries a "
                               "MAC): verify it with the key (--key-file)")
        return report
    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)  # not in the middle of an append
            try:
                prev = _verify_chain(fh, key, report)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError as exc:
        report.problems.append(f"cannot read {path}: {exc.strerror}")
        return report
    if report.problems:
        return report
    report.head = prev
    last_seq = report.entries - 1
    if head is not None:
        report.anchored = True
        if not hmac.compare_digest(head, prev):
            report.problems.append(
                f"last entry hash {prev[:16]}… does not match the given head {head[:16]}… "
                "(entries were removed from the end, or the log was rewritten)")
        return report
    head_file = _head_path(path)
    if anchor is None:
        if key is not None:
            report.problems.append(
                f"anchor {head_file} is missing: a keyed log must keep its anchor (the tail may "
                "have been cut and the anchor deleted); pass a head hash kept elsewhere with "
                "--head")
        return report
    report.anchored = True
    if key is not None and not (anchor.mac and hmac.compare_digest(
            anchor.mac, _anchor_mac(anchor.seq, anchor.digest, key))):
        report.problems.append(f"anchor {head_file} is not authenticated by the key (it was "
                               "rewritten without the key)")
    elif anchor.seq != last_seq or not hmac.compare_digest(anchor.digest, prev):
        report.problems.append(
            f"last entry (seq {last_seq}, hash {prev[:16]}…) does not match the anchor (seq "
            f"{anchor.seq}, hash {anchor.digest[:16]}…): entries were removed from the end, the "
            "log was rewritten, or an append was interrupted")
    return report


def _verify_chain(fh: Any, key: bytes | None, report: AuditReport) -> str:
    """Walk every line; appends the first problem to ``report``; returns the last hash."""
    prev = GENESIS
    no = 0
    while True:
        raw = fh.readline(_MAX_LINE + 1)
        if not raw:
            return prev
        no += 1
        if len(raw) > _MAX_LINE:
            report.problems.append(f"line {no}: longer than {_MAX_LINE} bytes")
            return prev
        try:
            entry = json.loads(raw)
            seq, got_prev, got_hash = entry["seq"], entry["prev"], entry["hash"]
            if type(seq) is not int or not _is_hex64(got_prev) or not _is_hex64(got_hash):
                raise TypeError("wrong field types")
            digest = _digest(got_prev, entry, key)
        except (ValueError, KeyError, TypeError, RecursionError):
            report.problems.append(f"line {no}: not a valid audit entry")
            return prev
        if seq != no - 1:
            report.problems.append(f"line {no}: seq {seq}, expected {no - 1} "
                                   "(a line was deleted, inserted or moved)")
        elif got_prev != prev:
            report.problems.append(f"line {no}: prev hash does not match line {no - 1} "
                                   "(deleted, reordered or edited entries)")
        elif not hmac.compare_digest(digest, got_hash):
            report.problems.append(
                f"line {no}: hash mismatch (the entry was edited"
                + (", or the log was written with another key)" if key is not None else
                   ", or the log is keyed: pass its key)"))
        if report.problems:
            return prev
        prev = got_hash
        report.entries += 1


# -- the key at rest -----------------------------------------------------------------------------


def new_key_file(path: str | os.PathLike[str], secret: Secret, **seal_kw: Any) -> Path:
    """Write a fresh random :data:`KEY_BYTES`-byte audit key to the new file ``path``, sealed
    under ``secret`` (mode 0600; an existing file is never replaced). ``seal_kw`` go to
    :func:`veil.trust.seal.seal` (``scrypt_log2_n`` for tests)."""
    from veil.trust.seal import write_sealed

    return write_sealed(path, secrets.token_bytes(KEY_BYTES), secret, purpose=KEY_PURPOSE,
                        overwrite=False, **seal_kw)


def _read_raw(path: Path, what: str) -> bytes:
    if not path.exists():
        raise ConfigurationError(f"{what} {path}: no such file")
    if not path.is_file():
        raise ConfigurationError(f"{what} {path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"{what} {path}: cannot read it ({exc.strerror})") from exc
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ConfigurationError(f"{what} {path}: over {MAX_KEY_FILE_BYTES} bytes; is it the key "
                                 "file? (make one with `veil audit key new FILE`)")
    return raw


def read_key_file(path: str | os.PathLike[str],
                  secret: Secret | Callable[[], Secret] | None = None, *,
                  what: str = "audit key file") -> bytes:
    """The HMAC key in ``path``: sealed by :func:`new_key_file` (opened with ``secret``), or a
    legacy plain file of raw bytes (read with a :class:`UserWarning`).

    ``secret`` may be a callable returning the :class:`~veil.trust.seal.Secret`; it is called
    only when the file is sealed (a command line asks for a passphrase only then). ``what``
    names the file in messages (a command line passes its flag). A wrong secret raises
    :class:`~veil.errors.UnsealError`; a sealed file without a secret, a missing, oversized or
    too short key :class:`~veil.errors.ConfigurationError`.
    """
    from veil.trust.seal import is_sealed, unseal

    p = Path(path)
    raw = _read_raw(p, what)
    if is_sealed(raw):
        if secret is None:
            raise ConfigurationError(
                f"{what} {p} is sealed; pass the Secret it was sealed with (CLI: "
                "--passphrase-env VAR, --passphrase-file FILE or --seal-key-file FILE, or set "
                "VEIL_PASSPHRASE or VEIL_KEY_FILE)")
        key = unseal(raw, secret() if callable(secret) else secret, purpose=KEY_PURPOSE,
                     max_bytes=MAX_KEY_FILE_BYTES)
    else:
        key = raw
        if len(key) >= MIN_KEY_BYTES:
            warnings.warn(
                f"{what} {p} is not encrypted: anyone who can read it can forge this audit log; "
                f"seal it in place with `veil audit key seal {p}` (the key stays the same, so "
                "existing logs still verify)", UserWarning, stacklevel=2)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"{what} {p}: {len(key)} bytes, a key needs at least "
                                 f"{MIN_KEY_BYTES} (make one with `veil audit key new FILE`)")
    return key


def seal_key_file(path: str | os.PathLike[str], secret: Secret, **seal_kw: Any) -> Path:
    """Seal the legacy plain key file ``path`` in place under ``secret`` (atomically, mode
    0600); the key itself is unchanged. An already sealed file is refused."""
    from veil.trust.seal import is_sealed, write_sealed

    p = Path(path)
    raw = _read_raw(p, "audit key file")
    if is_sealed(raw):
        raise ConfigurationError(f"audit key file {p} is sealed already; nothing to do")
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigurationError(f"audit key file {p}: {len(raw)} bytes, a key needs at least "
                                 f"{MIN_KEY_BYTES}; make a new one with `veil audit key new FILE`")
    return write_sealed(p, raw, secret, purpose=KEY_PURPOSE, overwrite=True, **seal_kw)
