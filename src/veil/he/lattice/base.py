"""What the CKKS and BFV wrappers share: the context base and the tensor's metadata.

:class:`SealContext` holds the native TenSEAL context, its parameters and the key id, and writes
and reads the context envelopes (``<scheme>.context.public`` / ``<scheme>.context.secret``) and
the common part of a tensor envelope. A scheme sets the class attributes ``scheme``,
``kind_public``, ``kind_secret`` and implements two hooks: ``params_from`` (the parameter set from
a header's description) and ``check_native`` (a deserialized native context against it).
:class:`SealTensor` is the encrypted tensor's shape, size and context. A secret context is
written sealed under a :class:`~veil.trust.seal.Secret` (or, with ``expose_secret=True``, in the
clear), by the rule of :mod:`veil.he.atrest`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError
from veil.he import serialize as envelope
from veil.he.atrest import SEAL_OVERHEAD, check_secret, open_secret, read_limited, seal_secret
from veil.he.lattice.native import check_header_field, cpp, frame, translate, unframe
from veil.he.lattice.sealcheck import check_blob
from veil.trust.seal import SCRYPT_LOG2_N, Secret, atomic_write

__all__ = ["SealContext", "SealTensor"]


class SealContext:
    """What CKKS and BFV contexts share: the native TenSEAL context, its parameters, the key id.

    Subclasses are constructed as ``cls(native, params, key_id)``.
    """

    __slots__ = ("_params", "_native", "_key_id", "_params_hash", "_sk", "__weakref__")

    scheme: ClassVar[str] = ""  # "CKKS" / "BFV", as in messages
    kind_public: ClassVar[str] = ""
    kind_secret: ClassVar[str] = ""

    def __init__(self, native: Any, params: Any, key_id: str) -> None:
        self._params = params
        self._native = native
        self._key_id = key_id
        self._params_hash = envelope.params_digest(params.describe())
        self._sk: Any = None

    def public(self) -> Self:
        """A copy without the secret key (this context is left unchanged)."""
        if not self.has_secret_key:
            return self
        with translate("making the context public"):
            native = self._native.copy()
            native.make_context_public(False, False)
        return type(self)(native, self._params, self._key_id)

    def _secret_key_for(self, t: Any, tensor_type: type) -> Any:
        """The secret key that decrypts ``t``, after checking ``t`` belongs to this key pair."""
        if not isinstance(t, tensor_type):
            raise ConfigurationError(
                f"decrypt expects a {tensor_type.__name__}, got {type(t).__name__}")
        if t._ctx is not self and t._ctx.key_id != self._key_id:
            raise KeyMismatchError(
                f"this tensor was encrypted under key {t._ctx.key_id[:8]}…, not this context's "
                f"key {self._key_id[:8]}…; decrypt it with the context that encrypted it"
            )
        if not self.has_secret_key:
            raise ConfigurationError(
                "this is a public context (no secret key) and cannot decrypt; decrypt with the "
                f"secret context returned by {type(self).__name__}.generate (or loaded with its "
                "secret key)"
            )
        if self._sk is None:
            self._sk = self._native.secret_key()
        return self._sk

    @staticmethod
    def _user_output(out: Any, t: Any) -> Any:
        """Decrypted values ``out`` in ``t``'s shape, as a torch tensor if ``t`` came from torch."""
        out = out.reshape(t.shape)
        if t._torch:
            import torch

            return torch.from_numpy(out)
        return out

    # -- context envelopes -----------------------------------------------------------------------
    def serialize(self, *, include_secret_key: bool = False, secret: Secret | None = None,
                  expose_secret: bool = False, scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
        """Envelope of this context. Public by default (no secret-key bytes at all).

        ``include_secret_key=True`` serializes the secret key too, and then needs one of:
        ``secret=Secret.passphrase(...)`` / ``Secret.key_file(...)`` (:mod:`veil.trust.seal`),
        which seals the envelope with AES-256-GCM for purpose ``"veil.ckks.secret-context"``
        (``"veil.bfv.secret-context"`` for BFV), the form to store; or ``expose_secret=True``,
        the **plaintext** secret context (tests and in-memory use only: whoever reads it can
        decrypt everything under this key). ``scrypt_log2_n`` is the sealing cost (tests only).
        """
        if include_secret_key and not self.has_secret_key:
            raise ConfigurationError("include_secret_key=True but this context has no secret key")
        if not include_secret_key:
            if secret is not None:
                raise ConfigurationError(
                    "secret= seals a secret context: pass include_secret_key=True with it, or "
                    "drop secret= for the public context (which needs no sealing)")
            return self._envelope(False)
        return seal_secret(lambda: self._envelope(True), what=f"{self.scheme} secret context",
                           purpose=self.secret_purpose(), secret=secret,
                           expose_secret=expose_secret, scrypt_log2_n=scrypt_log2_n)

    @classmethod
    def secret_purpose(cls) -> str:
        """The sealing purpose of this scheme's secret contexts (``"veil.ckks.secret-context"``)."""
        return f"veil.{cls.scheme.lower()}.secret-context"

    def _envelope(self, secret: bool) -> bytes:
        with translate(f"serializing the {self.scheme} context"):
            native = self._native if secret or not self.has_secret_key else self.public()._native
            blob = native.serialize(True, secret, True, True)
        header = {"key_id": self._key_id, "params": self._params.describe(),
                  "galois": self.has_galois_keys}
        return envelope.pack(self.kind_secret if secret else self.kind_public,
                             frame(header, [blob]), params_hash=self._params_hash)

    def save(self, path: str | os.PathLike[str], secret: Secret, *, overwrite: bool = False,
             scrypt_log2_n: int = SCRYPT_LOG2_N) -> Path:
        """Write this secret context sealed under ``secret`` to ``path`` (mode 0600,
        atomically; an existing file is refused unless ``overwrite=True``). For a public
        context write ``ctx.serialize()`` (no secret needed). Read it with :meth:`load_file`."""
        data = self.serialize(include_secret_key=True, secret=check_secret(secret, "save"),
                              scrypt_log2_n=scrypt_log2_n)
        return atomic_write(path, data, mode=0o600, overwrite=overwrite)

    @classmethod
    def load_file(cls, path: str | os.PathLike[str], secret: Secret | None = None, *,
                  max_bytes: int = envelope.DEFAULT_MAX_BYTES, params: Any = None) -> Self:
        """Load the context in file ``path`` (sealed by :meth:`save`, or a plain envelope)."""
        data = read_limited(Path(path), f"{cls.scheme} context file", max_bytes + SEAL_OVERHEAD)
        return cls.load(data, secret=secret, max_bytes=max_bytes, params=params)

    @classmethod
    def load(cls, data: bytes, *, secret: Secret | None = None,
             max_bytes: int = envelope.DEFAULT_MAX_BYTES, params: Any = None) -> Self:
        """Load a context; pass ``params`` to insist on specific parameters.

        A sealed secret context (``serialize(include_secret_key=True, secret=...)``) needs the
        same ``secret``; a wrong one raises :class:`~veil.errors.UnsealError`. Plain envelopes
        (public, or exposed secret contexts) load without one.
        """
        data = open_secret(data, what=f"{cls.scheme} secret context",
                           purpose=cls.secret_purpose(), secret=secret, max_bytes=max_bytes)
        env = envelope.unpack(data, kind=(cls.kind_public, cls.kind_secret), max_bytes=max_bytes,
                              params_hash=None if params is None else
                              envelope.params_digest(params.describe()))
        what = env.kind
        header, blobs = unframe(env.body, what)
        key_id = check_header_field(header, "key_id", str, what)
        desc = check_header_field(header, "params", dict, what)
        galois = check_header_field(header, "galois", bool, what)
        if len(key_id) != 32 or len(blobs) != 1:
            raise SerializationError(f"{what}: malformed key id or blob count")
        p = cls.params_from(desc, what)
        if envelope.params_digest(p.describe()) != env.params_hash:
            raise SerializationError(f"{what}: parameter hash does not match the header")
        check_blob(blobs[0], kind="context", what=what)  # SEAL aborts on some malformed blobs
        try:
            native = cpp().TenSEALContext.deserialize(blobs[0])
        except Exception as exc:  # TenSEAL raises ValueError/RuntimeError/TypeError here
            raise SerializationError(
                f"{what}: TenSEAL could not parse the context ({exc})") from exc
        cls.check_native(native, p, secret=env.kind == cls.kind_secret, galois=galois, what=what)
        return cls(native, p, key_id)

    @classmethod
    def params_from(cls, desc: dict[str, Any], what: str) -> Any:
        """The parameter set a context header describes (SerializationError if invalid)."""
        raise NotImplementedError

    @classmethod
    def check_native(cls, native: Any, params: Any, *, secret: bool, galois: bool,
                     what: str) -> None:
        """Raise SerializationError unless ``native`` has ``params`` and the declared keys."""
        raise NotImplementedError

    # -- tensor envelopes ------------------------------------------------------------------------
    def _pack_tensor(self, kind: str, chunks: Sequence[Any], header: dict[str, Any],
                     what: str) -> bytes:
        """``kind`` envelope of the ciphertexts ``chunks``; ``header`` gets this key's id."""
        with translate(what):
            blobs = [c.serialize() for c in chunks]
        header = {"key_id": self._key_id, **header}
        return envelope.pack(kind, frame(header, blobs), params_hash=self._params_hash)

    def _open_tensor(self, data: bytes, kind: str, fields: Sequence[tuple[str, Any]],
                     max_bytes: int) -> tuple[list[Any], list[bytes]]:
        """The header ``fields`` (name, type) of a ``kind`` envelope made under this key, and its
        ciphertext blobs (unparsed)."""
        env = envelope.unpack(data, kind=kind, params_hash=self._params_hash,
                              max_bytes=max_bytes)
        header, blobs = unframe(env.body, kind)
        key_id = check_header_field(header, "key_id", str, kind)
        values = [check_header_field(header, name, typ, kind) for name, typ in fields]
        if key_id != self._key_id:
            raise KeyMismatchError(
                f"this tensor was made under key {key_id[:8]}…, not this context's key "
                f"{self._key_id[:8]}…; load it with the context that encrypted it"
            )
        return values, blobs

    # -- metadata --------------------------------------------------------------------------------
    @property
    def params(self) -> Any:
        """The parameter set (``CKKSParams`` / ``BFVParams``)."""
        return self._params

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self._params.slots

    @property
    def has_secret_key(self) -> bool:
        return bool(self._native.has_secret_key())

    @property
    def has_galois_keys(self) -> bool:
        """Whether rotations (``sum``, ``dot``, ``matmul``) are available."""
        return bool(self._native.has_galois_keys())

    @property
    def key_id(self) -> str:
        """Random identifier of the key pair (shared by ``public()`` copies; not secret)."""
        return self._key_id

    @property
    def params_hash(self) -> bytes:
        """SHA-256 of the parameter description, carried in every envelope."""
        return self._params_hash


class SealTensor:
    """The metadata every encrypted lattice tensor has: shape, size and its context."""

    __slots__ = ()

    _ctx: Any
    _shape: tuple[int, ...]
    _size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def size(self) -> int:
        return self._size

    @property
    def context(self) -> Any:
        """The context (``CKKSContext`` / ``BFVContext``) that encrypted this tensor."""
        return self._ctx
