"""Append-only, hash-chained audit log of releases (JSON lines) and its verifier.

Every line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous line's
``hash``; 64 zeros for the first) and ``hash`` = SHA-256 over ``prev`` and the canonical JSON of
the entry without ``hash`` (HMAC-SHA-256 with ``key`` when one is given). Editing any field,
reordering or deleting lines breaks the chain; :func:`verify` reports the first broken line.

Truncating the *tail* cannot be seen from the chain alone, so every append also rewrites an
anchor ``<file>.head`` (``{"seq": .., "hash": ..}``, atomically); :func:`verify` compares the
log's last entry with it. Publish or copy the head hash elsewhere to detect an attacker who
rewrites both files. Without a ``key`` anyone can recompute a consistent chain after an edit:
the keyless chain detects accidents and tampering by anyone who cannot also replace the anchor
you kept; with a key only key holders can forge.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["AuditLog", "AuditReport", "verify", "GENESIS"]

GENESIS = "0" * 64
_RESERVED = ("seq", "prev", "hash")
_MAX_LINE = 1 << 20


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(prev: str, entry: Mapping[str, Any], key: bytes | None) -> str:
    body = prev.encode() + b"\n" + _canonical({k: v for k, v in entry.items() if k != "hash"})
    if key is not None:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """Appends release records to ``path``; each record is chained to the one before it."""

    def __init__(self, path: str | os.PathLike[str], *, key: bytes | None = None) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) < 16):
            raise ConfigurationError("audit key must be at least 16 random bytes (os.urandom(32))")
        self.path = Path(path)
        self.key = key

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
                seq, prev = self._tail(fh)
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

    def _tail(self, fh: Any) -> tuple[int, str]:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS
        fh.seek(max(0, size - _MAX_LINE))
        lines = fh.read().splitlines()
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]) + 1, str(last["hash"])
        except (ValueError, KeyError, IndexError) as exc:
            raise ConfigurationError(
                f"audit log {self.path} ends in a damaged line; run `veil audit verify "
                f"{self.path}` before appending"
            ) from exc

    def _write_head(self, seq: int, digest: str) -> None:
        head = _head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        tmp.write_text(json.dumps({"seq": seq, "hash": digest}) + "\n")
        os.replace(tmp, head)


@dataclass
class AuditReport:
    """Outcome of :func:`verify`: ``ok`` only when the chain and the anchor both check out."""

    entries: int = 0
    head: str = GENESIS
    anchored: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    path: str | os.PathLike[str], *, key: bytes | None = None, head: str | None = None
) -> AuditReport:
    """Check the whole chain of ``path`` (and its anchor, or the given ``head`` hash)."""
    path = Path(path)
    report = AuditReport()
    if not path.exists():
        report.problems.append(f"{path} does not exist")
        return report
    prev = GENESIS
    with open(path, "rb") as fh:
        for no, raw in enumerate(fh, 1):
            if len(raw) > _MAX_LINE:
                report.problems.append(f"line {no}: longer than {_MAX_LINE} bytes")
                return report
            try:
                entry = json.loads(raw)
                seq, got_prev, got_hash = entry["seq"], entry["prev"], entry["hash"]
            except (ValueError, KeyError, TypeError):
                report.problems.append(f"line {no}: not a valid audit entry")
                return report
            if seq != no - 1:
                report.problems.append(f"line {no}: seq {seq}, expected {no - 1} "
                                       "(a line was deleted, inserted or moved)")
            if got_prev != prev:
                report.problems.append(f"line {no}: prev hash does not match line {no - 1} "
                                       "(deleted, reordered or edited entries)")
            if not hmac.compare_digest(_digest(got_prev, entry, key), str(got_hash)):
                report.problems.append(f"line {no}: hash mismatch (the entry was edited)")
            if report.problems:
                return report
            prev = got_hash
            report.entries += 1
    report.head = prev
    anchor = head
    head_file = _head_path(path)
    if anchor is None and head_file.exists():
        try:
            anchor = str(json.loads(head_file.read_text())["hash"])
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"{head_file}: damaged anchor file")
            return report
    if anchor is not None:
        report.anchored = True
        if not hmac.compare_digest(anchor, prev):
            report.problems.append(
                f"last entry hash {prev[:16]}… does not match the anchor {anchor[:16]}… "
                "(entries were removed from the end, or the log was rewritten)"
            )
    return report
