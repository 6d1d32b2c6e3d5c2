"""Content-addressed on-disk store of uploaded public contexts (file name = SHA-256 of the bytes).

Uploads are streamed to a temporary file while their SHA-256 and size are computed, so a
tens-of-MB evaluation-key context is never held in the server's memory and is cut off the moment
it passes the size limit. A context becomes visible only after a worker has validated it (public,
right parameters) and it has been renamed into place. At most ``max_contexts`` are kept; the least
recently used one that no request is using is deleted first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

__all__ = ["ContextStore", "Upload"]


class Upload:
    """A body being streamed to a temporary file in the store directory."""

    def __init__(self, directory: Path, *, digest: bool = True) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256() if digest else None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Close the file; return the hex SHA-256 of what was written ("" without digest)."""
        self._file.close()
        return self._hash.hexdigest() if self._hash is not None else ""

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class ContextStore:
    """Thread-safe index of stored contexts with pinning and least-recently-used eviction."""

    def __init__(self, directory: Path, *, max_contexts: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_contexts = max_contexts
        self._lock = threading.Lock()
        self._used: OrderedDict[str, float] = OrderedDict()
        self._pins: dict[str, int] = {}
        for stale in self.directory.glob("upload-*.part"):
            stale.unlink(missing_ok=True)
        for path in sorted(self.directory.glob("*.ctx"), key=lambda p: p.stat().st_mtime):
            self._used[path.stem] = path.stat().st_mtime

    def path(self, context_id: str) -> Path:
        return self.directory / f"{context_id}.ctx"

    def __len__(self) -> int:
        with self._lock:
            return len(self._used)

    def new_upload(self, *, digest: bool = True) -> Upload:
        return Upload(self.directory, digest=digest)

    def acquire(self, context_id: str) -> bool:
        """Pin a stored context for one request; False if it is not stored."""
        with self._lock:
            if context_id not in self._used:
                return False
            self._used.move_to_end(context_id)
            self._used[context_id] = time.time()
            self._pins[context_id] = self._pins.get(context_id, 0) + 1
            return True

    def release(self, context_id: str) -> None:
        with self._lock:
            left = self._pins.get(context_id, 0) - 1
            if left > 0:
                self._pins[context_id] = left
            else:
                self._pins.pop(context_id, None)

    def contains(self, context_id: str) -> bool:
        with self._lock:
            return context_id in self._used

    def size_of(self, context_id: str) -> int | None:
        with self._lock:
            if context_id not in self._used:
                return None
        try:
            return self.path(context_id).stat().st_size
        except FileNotFoundError:
            return None

    def commit(self, context_id: str, upload: Upload) -> None:
        """Move a validated upload into place and evict beyond ``max_contexts``."""
        target = self.path(context_id)
        os.replace(upload.path, target)
        with self._lock:
            self._used[context_id] = time.time()
            self._used.move_to_end(context_id)
            victims = []
            for cid in list(self._used):
                if len(self._used) - len(victims) <= self.max_contexts:
                    break
                if cid != context_id and not self._pins.get(cid):
                    victims.append(cid)
            for cid in victims:
                del self._used[cid]
        for cid in victims:
            self.path(cid).unlink(missing_ok=True)
