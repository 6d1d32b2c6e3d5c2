"""On-disk store of uploaded public contexts (file name = SHA-256 of the bytes), with owners.

Uploads are streamed to a temporary file while their SHA-256 and size are computed, so a
tens-of-MB evaluation-key context is never held in the server's memory and is cut off the moment
it passes the size limit. A context becomes visible only after it matched the model's plan
(:func:`check_context_header`: public, the plan's parameters and keys, at most
:func:`context_size_limit` bytes), a worker validated it, and it was renamed into place.

Every stored context has *owners*: the clients (by address) that uploaded it. A client sees and
uses only the contexts it owns (others answer 404), holds at most ``per_client`` of them (beyond
that its own least recently used one is dropped), and can never evict another client's context:
when ``max_contexts`` are stored, a new upload takes the place of a context nobody owns or nobody
used for ``idle_s`` seconds, and is refused otherwise. Pinned contexts (in use by a request) are
never deleted.

Every stored context also has a *layout*: the one of the served model's layouts
(:mod:`veil.serve.layouts`) it was checked and uploaded for, so a client of a model served in
both layouts holds one context per layout it uses, each under the same per-client quota; a
request names the layout and is refused when its context belongs to the other one.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.inference import PublicPlan
from veil.serve.plans import context_kind, is_packed, plan_rotations

__all__ = ["ContextStore", "Upload", "context_size_limit", "check_context_header",
           "CONTEXT_KIND", "SLOT_CONTEXT_KIND"]

CONTEXT_KIND = "ckks.context.public"
_SECRET_KIND = "ckks.context.secret"
SLOT_CONTEXT_KIND = "ckks.slots.public"  # veil.he.lattice.slots.KIND_PUBLIC (packed layout)
_SLOT_SECRET_KIND = "ckks.slots.secret"
_SLACK_BYTES = 64 * 1024


def context_size_limit(plan: PublicPlan) -> int:
    """The most bytes a serialized public context for a model with this ``plan`` can take.

    With ``N`` the ring degree, ``K`` the number of primes and ``G = 2 log2(N/2)`` the Galois
    elements of SEAL's default rotation set, a key-switching key is ``K - 1`` ciphertexts of
    ``2 N K`` 8-byte words; the context holds the public key (one such ciphertext), the
    relinearization key and, only if ``plan.galois_keys``, ``G`` Galois keys. The bound is
    that size plus 2 % and 64 KiB (SEAL's headers; contexts serialize compressed, below it).
    A packed-layout context (``SlotContext``) holds no public key and one Galois key per
    rotation step of the plan instead of ``G``.
    """
    params = plan.params
    n = int(params["poly_modulus_degree"])
    k = len(params["coeff_mod_bit_sizes"])
    if n < 2 or n & (n - 1) or k < 2:
        raise ConfigurationError(f"model plan has invalid CKKS parameters {params!r:.200}")
    if is_packed(plan):
        words = (k - 1) * (1 + len(plan_rotations(plan))) * 2 * n * k
    else:
        g = 2 * ((n // 2).bit_length() - 1) if plan.galois_keys else 0
        words = (1 + (k - 1) * (1 + g)) * 2 * n * k
    return int(words * 8 * 1.02) + _SLACK_BYTES


def check_context_header(prefix: bytes, plan: PublicPlan) -> None:
    """Check the start of an uploaded context against the model's ``plan``, before TenSEAL.

    ``prefix`` is the first bytes of the upload (the envelope head and the framed JSON header
    are within the first 70 KiB). Raises ``SerializationError`` for a payload that is not a
    context, ``ConfigurationError`` for a secret context, the other kind of context (packed
    layout: ``SlotContext``, else ``CKKSContext``) or one whose parameters or Galois keys
    (packed: rotation steps) differ from the plan. The worker's ``load`` then checks that the
    keys really present match this header (and that the digest covers all of it).
    """
    from veil.he import serialize as envelope

    if len(prefix) < 6 or prefix[:4] != envelope.MAGIC or prefix[4] != envelope.FORMAT_VERSION:
        raise SerializationError("not a Veil context: upload ctx.public().serialize()")
    kind = prefix[6 : 6 + prefix[5]].decode("ascii", "replace")
    if kind in (_SECRET_KIND, _SLOT_SECRET_KIND):
        raise ConfigurationError(
            "the uploaded context contains a SECRET KEY; the server refuses and did not store "
            "it. Upload ctx.public().serialize() instead (and consider this key exposed)")
    want_kind = SLOT_CONTEXT_KIND if is_packed(plan) else CONTEXT_KIND
    if kind in (CONTEXT_KIND, SLOT_CONTEXT_KIND) and kind != want_kind:
        raise ConfigurationError(
            f"the uploaded context is a {kind!r} but the model's plan runs on a "
            f"{context_kind(plan)} ({want_kind!r}); generate the context for the plan of "
            "GET /model (the packed layout: SlotContext.generate(params, rotations))")
    if kind != want_kind:
        raise SerializationError(f"wrong payload kind {kind[:64]!r}; expected {want_kind}")
    pos = 6 + len(kind) + 32 + 8
    try:
        (hlen,) = struct.unpack_from(">I", prefix, pos)
        head = prefix[pos + 4 : pos + 4 + hlen]
        if len(head) != hlen:
            raise SerializationError(f"{kind}: header of {hlen} bytes is truncated")
        header = envelope.load_json(head, what=f"{kind} header", max_bytes=64 * 1024)
    except struct.error as exc:
        raise SerializationError(f"{kind}: truncated before its header") from exc
    if not isinstance(header, dict):
        raise SerializationError(f"{kind}: header is not an object")
    if is_packed(plan):
        _check_slot_header(header, plan)
        return
    want, galois = plan.params, plan.galois_keys
    if header.get("params") != want:
        raise ConfigurationError(
            f"context parameters {header.get('params')!r:.200} differ from the model's {want}; "
            "generate the context with the parameters of GET /model")
    if header.get("galois") is not galois:
        raise ConfigurationError(
            f"context {'has' if header.get('galois') else 'lacks'} Galois keys but the model "
            f"{'needs' if galois else 'does not need'} them (GET /model: plan.galois_keys); "
            f"generate it with galois_keys={galois}")


def _check_slot_header(header: dict, plan: PublicPlan) -> None:
    """A ``ckks.slots.public`` header against a packed plan: parameters and rotation steps."""
    if header.get("secret") is not False:
        raise ConfigurationError(
            "the uploaded context is marked as holding a SECRET KEY; the server refuses and did "
            "not store it. Upload ctx.public().serialize() instead")
    if header.get("params") != plan.params:
        raise ConfigurationError(
            f"context parameters {header.get('params')!r:.200} differ from the model's "
            f"{plan.params}; generate the context with the parameters of GET /model")
    steps, want = header.get("steps"), list(plan_rotations(plan))
    if steps != want:
        raise ConfigurationError(
            f"context has Galois keys for rotation steps {steps!r:.200}, the model's plan needs "
            f"exactly {want} (GET /model: plan.input_encoding.rotations); generate it with "
            "SlotContext.generate(params, rotations)")


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


@dataclass
class _Entry:
    owners: dict[str, float] = field(default_factory=dict)  # client -> its last use
    used: float = 0.0  # last use by anyone
    layout: str = ""  # the layout it was checked for ("": from an earlier run, unchecked)


class ContextStore:
    """Thread-safe index of stored contexts with owners, per-client quotas and pinning.

    ``per_client`` defaults to ``max_contexts``; ``idle_s`` (default: never) is how long a
    context must go unused before an upload by another client may take its place.
    """

    def __init__(self, directory: Path, *, max_contexts: int, per_client: int | None = None,
                 idle_s: float = float("inf")) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_contexts = max_contexts
        self.per_client = max_contexts if per_client is None else per_client
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        for stale in self.directory.glob("upload-*.part"):
            stale.unlink(missing_ok=True)
        for path in self.directory.glob("*.ctx"):  # from an earlier run: nobody's any more
            self._entries[path.stem] = _Entry(used=path.stat().st_mtime)

    def path(self, context_id: str) -> Path:
        return self.directory / f"{context_id}.ctx"

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def new_upload(self, *, digest: bool = True) -> Upload:
        return Upload(self.directory, digest=digest)

    def _visible(self, context_id: str, client: str | None) -> _Entry | None:
        entry = self._entries.get(context_id)
        if entry is None or (client is not None and client not in entry.owners):
            return None
        return entry

    def acquire(self, context_id: str, client: str | None = None) -> bool:
        """Pin a stored context for one request; False if it is not stored (or, with
        ``client``, not owned by that client)."""
        with self._lock:
            entry = self._visible(context_id, client)
            if entry is None:
                return False
            now = time.time()
            entry.used = now
            if client is not None:
                entry.owners[client] = now
            self._pins[context_id] = self._pins.get(context_id, 0) + 1
            return True

    def release(self, context_id: str) -> None:
        with self._lock:
            left = self._pins.get(context_id, 0) - 1
            if left > 0:
                self._pins[context_id] = left
            else:
                self._pins.pop(context_id, None)

    def contains(self, context_id: str, client: str | None = None) -> bool:
        with self._lock:
            return self._visible(context_id, client) is not None

    def owned(self, client: str) -> int:
        """How many contexts ``client`` owns."""
        with self._lock:
            return sum(client in e.owners for e in self._entries.values())

    def layout_of(self, context_id: str, client: str | None = None) -> str | None:
        """The layout a stored context was uploaded for ("" if unchecked; None: not stored,
        or with ``client``, not owned by that client)."""
        with self._lock:
            entry = self._visible(context_id, client)
            return None if entry is None else entry.layout

    def layouts_of(self, client: str) -> dict[str, int]:
        """How many contexts ``client`` owns per layout."""
        with self._lock:
            counts: dict[str, int] = {}
            for e in self._entries.values():
                if client in e.owners:
                    counts[e.layout] = counts.get(e.layout, 0) + 1
            return counts

    def size_of(self, context_id: str, client: str | None = None) -> int | None:
        with self._lock:
            if self._visible(context_id, client) is None:
                return None
        try:
            return self.path(context_id).stat().st_size
        except FileNotFoundError:
            return None

    def room_for(self, client: str, context_id: str | None = None) -> str | None:
        """Why an upload by ``client`` could not be stored now (None: it could)."""
        with self._lock:
            plan = self._plan(client, context_id)
        return plan if isinstance(plan, str) else None

    def _plan(self, client: str, context_id: str | None) -> str | tuple[str | None, str | None]:
        """(own context to drop, other context to delete) to make room, or why there is none.

        Called with the lock held. Only ``client``'s own contexts, contexts nobody owns and
        contexts unused for ``idle_s`` are candidates; pinned ones never are.
        """
        entry = self._entries.get(context_id) if context_id else None
        if entry is not None and client in entry.owners:
            return (None, None)
        now = time.time()
        mine = [(e.owners[client], cid) for cid, e in self._entries.items()
                if client in e.owners and not self._pins.get(cid)]
        drop = None
        if sum(client in e.owners for e in self._entries.values()) >= self.per_client:
            if not mine:
                return (f"this client already stores {self.per_client} contexts, all in use; "
                        "retry when its requests finish")
            drop = min(mine)[1]
        if entry is not None:
            return (drop, None)
        freed = drop is not None and len(self._entries[drop].owners) == 1
        if len(self._entries) - freed < self.max_contexts:
            return (drop, None)
        spare = [(e.used, cid) for cid, e in self._entries.items()
                 if cid != drop and not self._pins.get(cid)
                 and (not e.owners or now - e.used >= self.idle_s)]
        if not spare:
            return (f"the server stores its maximum of {self.max_contexts} contexts, all in "
                    "recent use by other clients; retry later")
        return (drop, min(spare)[1])

    def commit(self, context_id: str, upload: Upload | None, client: str = "",
               layout: str = "") -> bool:
        """Store a validated ``upload`` (None: the context is already stored) for ``layout`` as
        owned by ``client``, making room only as :meth:`_plan` allows; False (nothing changed,
        the caller discards the upload) when there is no room."""
        with self._lock:
            plan = self._plan(client, context_id)
            if isinstance(plan, str) or (upload is None and context_id not in self._entries):
                return False
            drop, victim = plan
            victims = [victim] if victim else []
            if drop is not None:
                owners = self._entries[drop].owners
                owners.pop(client, None)
                if not owners:
                    victims.append(drop)
            for cid in victims:
                del self._entries[cid]
            entry = self._entries.get(context_id)
            if entry is None and upload is not None:  # (upload is None: stored, checked above)
                os.replace(upload.path, self.path(context_id))
                entry = self._entries[context_id] = _Entry()
            entry = self._entries[context_id]
            if upload is not None or not entry.layout:
                entry.layout = layout
            now = time.time()
            entry.owners[client] = entry.used = now
        for cid in victims:
            self.path(cid).unlink(missing_ok=True)
        return True
