"""Slot-level CKKS on SEAL (through ``tenseal.sealapi``): rotations by any step, chosen keys.

TenSEAL's vectors rotate only inside ``sum`` / ``mm`` / ``enc_matmul_plain`` and need Galois keys
for every power-of-two step (hundreds of MB). Low-latency inference needs more control, so this
layer drives SEAL's evaluator directly, on the same SEAL build TenSEAL ships:

* :class:`SlotContext` holds parameters (:class:`~veil.he.lattice.slotparams.SlotParams`,
  128-bit unless the caller
  opted out by name), relinearization keys and Galois keys **only for the rotation steps the
  caller lists**. The key owner's context also holds the secret key; :meth:`SlotContext.public`
  drops it (and the public key: the evaluating party never encrypts). Keys are generated in
  SEAL's seeded form, so the public context serializes at about half the size.
* :class:`SlotVector` is one ciphertext of ``slots`` values with its level and exact scale:
  plaintext products at a chosen scale (so a product followed by one rescale lands back on the
  working scale exactly), rescale, square, rotations, additions.
* The key owner encrypts with the secret key (symmetric, seeded: half the bytes of a public-key
  ciphertext, same RLWE security) and is the only one that can decrypt.

Wire forms are Veil envelopes (:mod:`veil.he.serialize`): ``ckks.slots.public``,
``ckks.slots.secret`` (sealed at rest unless ``expose_secret=True``) and ``ckks.slots.vector``;
every SEAL object inside is checked structurally before SEAL parses it.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, DepthExhaustedError, KeyMismatchError
from veil.he import serialize as envelope
from veil.he.atrest import open_secret, seal_secret
from veil.he.lattice.native import check_header_field, frame, unframe
from veil.he.lattice.slotio import from_bytes, seal, to_bytes
from veil.he.lattice.slotparams import SlotParams
from veil.trust.seal import SCRYPT_LOG2_N, Secret

__all__ = ["SlotContext", "SlotVector", "KIND_PUBLIC", "KIND_SECRET", "KIND_VECTOR"]

KIND_PUBLIC = "ckks.slots.public"
KIND_SECRET = "ckks.slots.secret"
KIND_VECTOR = "ckks.slots.vector"
MAX_STEPS = 256


def _check_steps(steps: Any, slots: int) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(s) % slots for s in steps} - {0}))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"rotation steps must be integers, got {steps!r}") from exc
    if len(out) > MAX_STEPS:
        raise ConfigurationError(f"{len(out)} rotation steps is more than the limit {MAX_STEPS}")
    return out


class SlotContext:
    """CKKS keys and parameters for slot-level evaluation. Create with :meth:`generate`."""

    def __init__(self, params: SlotParams, native: Any, steps: tuple[int, ...], key_id: str,
                 *, sk: Any = None, relin_blob: bytes, galois_blob: bytes | None) -> None:
        s = seal()
        self._params, self._native, self._steps, self._key_id = params, native, steps, key_id
        self._sk, self._relin_blob, self._galois_blob = sk, relin_blob, galois_blob
        self._params_hash = envelope.params_digest(params.describe())
        self._relin: Any = None
        self._galois: Any = None
        self.encoder = s.CKKSEncoder(native)
        self.evaluator = s.Evaluator(native)
        self._encryptor = s.Encryptor(native, sk) if sk is not None else None
        self._decryptor = s.Decryptor(native, sk) if sk is not None else None
        self.scale = 2.0 ** params.scale_bits

    # -- construction --------------------------------------------------------------------------
    @staticmethod
    def native_for(params: SlotParams) -> Any:
        s = seal()
        p = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        p.set_poly_modulus_degree(params.poly_modulus_degree)
        p.set_coeff_modulus(s.CoeffModulus.Create(params.poly_modulus_degree,
                                                  list(params.coeff_mod_bit_sizes)))
        level = s.SEC_LEVEL_TYPE.NONE if params.allow_insecure else s.SEC_LEVEL_TYPE.TC128
        native = s.SEALContext(p, True, level)
        if not native.parameters_set():
            raise ConfigurationError(
                f"SEAL rejected {params.describe()} ({native.parameters_error_message()}); "
                "plan with models.plan(...) for a valid set")
        return native

    @classmethod
    def generate(cls, params: SlotParams, rotations: Any = ()) -> SlotContext:
        """A fresh key pair with Galois keys for exactly the ``rotations`` steps (left shifts;
        negative steps are right shifts). SEAL draws keys from its CSPRNG seeded by the OS."""
        if not isinstance(params, SlotParams):
            raise ConfigurationError(f"expected SlotParams, got {type(params).__name__}")
        steps = _check_steps(rotations, params.slots)
        native = cls.native_for(params)
        kg = seal().KeyGenerator(native)
        galois = None
        if steps:
            elts = native.key_context_data().galois_tool().get_elts_from_steps(list(steps))
            galois = to_bytes(kg.create_galois_keys(elts))
        return cls(params, native, steps, secrets.token_hex(16), sk=kg.secret_key(),
                   relin_blob=to_bytes(kg.create_relin_keys()), galois_blob=galois)

    def public(self) -> SlotContext:
        """A copy without the secret key (this context is unchanged)."""
        if self._sk is None:
            return self
        return SlotContext(self._params, self._native, self._steps, self._key_id,
                           relin_blob=self._relin_blob, galois_blob=self._galois_blob)

    # -- metadata ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "secret" if self._sk is not None else "public"
        return (f"SlotContext({kind}, N={self._params.poly_modulus_degree}, depth="
                f"{self._params.depth}, {len(self._steps)} rotation keys)")

    @property
    def params(self) -> SlotParams:
        return self._params

    @property
    def slots(self) -> int:
        return self._params.slots

    @property
    def rotations(self) -> tuple[int, ...]:
        """The rotation steps this context holds Galois keys for (in ``[1, slots)``)."""
        return self._steps

    @property
    def has_secret_key(self) -> bool:
        return self._sk is not None

    @property
    def has_galois_keys(self) -> bool:
        return bool(self._steps)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def params_hash(self) -> bytes:
        return self._params_hash

    @property
    def native(self) -> Any:
        """SEAL's context object (``tenseal.sealapi.SEALContext``)."""
        return self._native

    @property
    def relin_keys(self) -> Any:
        if self._relin is None:
            self._relin = from_bytes(seal().RelinKeys(), self._native, self._relin_blob,
                                     "kswitch", "relinearization keys")
        return self._relin

    @property
    def galois_keys(self) -> Any:
        if self._galois is None:
            if self._galois_blob is None:
                raise ConfigurationError("this context holds no Galois keys (no rotations)")
            self._galois = from_bytes(seal().GaloisKeys(), self._native, self._galois_blob,
                                      "kswitch", "Galois keys")
        return self._galois

    def prime(self, level: int) -> int:
        """The prime a rescale at ``level`` divides by (the last data prime of that level)."""
        data = self._context_data(level)
        return int(data.parms().coeff_modulus()[-1].value())

    def _context_data(self, level: int) -> Any:
        data = self._native.first_context_data()
        if not 0 <= level <= data.chain_index():
            raise DepthExhaustedError(
                f"level {level} does not exist under these parameters (depth "
                f"{self._params.depth}); plan with more depth")
        while data.chain_index() > level:
            data = data.next_context_data()
        return data

    def parms_id(self, level: int) -> Any:
        return self._context_data(level).parms_id()

    # -- encoding, encryption --------------------------------------------------------------------
    def encode(self, values: Any, level: int, scale: float) -> Any:
        """A plaintext of ``values`` (at most ``slots``, zero-padded) at ``level`` and ``scale``."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size > self.slots or not np.isfinite(arr).all():
            raise ConfigurationError(
                f"encode needs at most {self.slots} finite values, got {arr.size}")
        pt = seal().Plaintext()
        self.encoder.encode(arr.tolist(), self.parms_id(level), float(scale), pt)
        return pt

    def encrypt(self, values: Any, *, bound: float | None = None) -> SlotVector:
        """Encrypt at most ``slots`` finite values (zero-padded) with the secret key."""
        if self._encryptor is None:
            raise ConfigurationError("encrypting needs the key owner's context (the secret key)")
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        limit = self._params.max_abs_value if bound is None else bound
        if arr.size == 0 or arr.size > self.slots or not np.isfinite(arr).all() \
                or float(np.abs(arr).max()) >= limit:
            bad = arr[~np.isfinite(arr)][:1].tolist() or [float(np.abs(arr).max(initial=0))]
            raise ConfigurationError(
                f"encrypt needs 1..{self.slots} finite values below {limit:g} in magnitude; got "
                f"{arr.size} values (offending: {bad[0]!r}); scale the input into the declared "
                "domain")
        level = self._params.depth
        pt = self.encode(arr, level, self.scale)
        return SlotVector(self, None, level, self.scale,
                          seeded=self._encryptor.encrypt_symmetric(pt))

    def decrypt(self, v: SlotVector) -> np.ndarray:
        """All ``slots`` values of ``v`` (the key owner only)."""
        if self._decryptor is None:
            raise ConfigurationError("decrypting needs the key owner's context (the secret key)")
        self._check_mine(v)
        pt = seal().Plaintext()
        self._decryptor.decrypt(v.ct, pt)
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)

    def _check_mine(self, v: SlotVector) -> None:
        if not isinstance(v, SlotVector) or v.ctx.key_id != self._key_id:
            raise KeyMismatchError(
                "this vector was not made under this context's key; use the context that "
                "encrypted it")

    # -- serialization -----------------------------------------------------------------------------
    def serialize(self, *, include_secret_key: bool = False, secret: Secret | None = None,
                  expose_secret: bool = False, scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
        """Envelope of this context: public by default (relinearization and Galois keys only).

        ``include_secret_key=True`` adds the secret key and needs ``secret=`` (sealed with
        AES-256-GCM, purpose ``"veil.ckks-slots.secret-context"``) or ``expose_secret=True``.
        """
        if not include_secret_key:
            if secret is not None:
                raise ConfigurationError("secret= seals a secret context: pass "
                                         "include_secret_key=True with it")
            return self._envelope(False)
        if self._sk is None:
            raise ConfigurationError("include_secret_key=True but this context has no secret key")
        return seal_secret(lambda: self._envelope(True), what="CKKS slot secret context",
                           purpose="veil.ckks-slots.secret-context", secret=secret,
                           expose_secret=expose_secret, scrypt_log2_n=scrypt_log2_n)

    def _envelope(self, secret: bool) -> bytes:
        blobs = [self._relin_blob] + ([self._galois_blob] if self._galois_blob else [])
        if secret:
            blobs.append(to_bytes(self._sk))
        header = {"key_id": self._key_id, "params": self._params.describe(),
                  "insecure": self._params.allow_insecure, "steps": list(self._steps),
                  "secret": secret}
        return envelope.pack(KIND_SECRET if secret else KIND_PUBLIC, frame(header, blobs),
                             params_hash=self._params_hash)

    @classmethod
    def load(cls, data: bytes, *, secret: Secret | None = None,
             max_bytes: int = envelope.DEFAULT_MAX_BYTES,
             params: SlotParams | None = None) -> SlotContext:
        """Load a context envelope (``params`` insists on a parameter set)."""
        from veil.errors import SerializationError

        data = open_secret(data, what="CKKS slot secret context",
                           purpose="veil.ckks-slots.secret-context", secret=secret,
                           max_bytes=max_bytes)
        env = envelope.unpack(data, kind=(KIND_PUBLIC, KIND_SECRET), max_bytes=max_bytes,
                              params_hash=None if params is None else
                              envelope.params_digest(params.describe()))
        header, blobs = unframe(env.body, env.kind)
        key_id = check_header_field(header, "key_id", str, env.kind)
        desc = check_header_field(header, "params", dict, env.kind)
        steps_raw = check_header_field(header, "steps", list, env.kind)
        insecure = check_header_field(header, "insecure", bool, env.kind)
        is_secret = env.kind == KIND_SECRET
        try:
            p = SlotParams.from_description(desc, allow_insecure=insecure)
            steps = _check_steps(steps_raw, p.slots)
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            raise SerializationError(f"{env.kind}: invalid parameters in the header") from exc
        if envelope.params_digest(p.describe()) != env.params_hash or len(key_id) != 32 \
                or len(blobs) != 1 + bool(steps) + is_secret or tuple(steps_raw) != steps:
            raise SerializationError(f"{env.kind}: header and blobs do not match")
        native = cls.native_for(p)
        sk = None
        if is_secret:
            sk = from_bytes(seal().SecretKey(), native, blobs[-1], "secret", "secret key")
        ctx = cls(p, native, steps, key_id, sk=sk, relin_blob=blobs[0],
                  galois_blob=blobs[1] if steps else None)
        ctx.check_keys()  # parse (and so check) the keys now, not on the first product
        return ctx

    def check_keys(self) -> None:
        """Parse the relinearization and Galois keys (SerializationError if malformed)."""
        _ = self.relin_keys
        if self._steps:
            _ = self.galois_keys

    def load_tensor(self, data: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> SlotVector:
        """Same as :meth:`load_vector` (the name ``EncryptedValues.load`` calls)."""
        return self.load_vector(data, max_bytes=max_bytes)

    def load_vector(self, data: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> SlotVector:
        """A ``ckks.slots.vector`` envelope made under this key (checked before SEAL parses)."""
        from veil.errors import SerializationError

        env = envelope.unpack(data, kind=KIND_VECTOR, params_hash=self._params_hash,
                              max_bytes=max_bytes)
        header, blobs = unframe(env.body, KIND_VECTOR)
        key_id = check_header_field(header, "key_id", str, KIND_VECTOR)
        level = check_header_field(header, "level", int, KIND_VECTOR)
        scale = check_header_field(header, "scale", float, KIND_VECTOR)
        if key_id != self._key_id:
            raise KeyMismatchError(
                f"this vector was made under key {key_id[:8]}…, not this context's key "
                f"{self._key_id[:8]}…")
        if len(blobs) != 1 or not 0 <= level <= self._params.depth or not scale > 0:
            raise SerializationError(f"{KIND_VECTOR}: malformed level, scale or blob count")
        ct = from_bytes(seal().Ciphertext(), self._native, blobs[0], "ciphertext", KIND_VECTOR)
        if ct.parms_id() != self.parms_id(level) or abs(ct.scale / scale - 1) > 1e-9 \
                or ct.size() != 2 or ct.poly_modulus_degree() != self._params.poly_modulus_degree:
            raise SerializationError(f"{KIND_VECTOR}: the ciphertext does not match its header")
        return SlotVector(self, ct, level, scale)


class SlotVector:
    """One CKKS ciphertext of ``slots`` values at ``level`` (rescales left) and ``scale``."""

    __slots__ = ("ctx", "_ct", "level", "scale", "_seeded")

    def __init__(self, ctx: SlotContext, ct: Any, level: int, scale: float, *,
                 seeded: Any = None) -> None:
        self.ctx, self._ct, self.level, self.scale, self._seeded = ctx, ct, level, scale, seeded

    @property
    def ct(self) -> Any:
        """The SEAL ciphertext (a fresh seeded encryption is expanded on first use)."""
        if self._ct is None:
            self._ct = from_bytes(seal().Ciphertext(), self.ctx.native, to_bytes(self._seeded),
                                  "ciphertext", "fresh ciphertext")
        return self._ct

    def __repr__(self) -> str:
        return f"SlotVector(level={self.level}, scale=2^{np.log2(self.scale):.3f})"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.ctx.slots,)

    @property
    def size(self) -> int:
        return self.ctx.slots

    @property
    def levels_left(self) -> int:
        return self.level

    def _new(self, ct: Any, level: int | None = None, scale: float | None = None) -> SlotVector:
        return SlotVector(self.ctx, ct, self.level if level is None else level,
                          self.scale if scale is None else scale)

    def _aligned(self, other: SlotVector, op: str) -> SlotVector:
        if not isinstance(other, SlotVector) or other.ctx.key_id != self.ctx.key_id:
            raise KeyMismatchError(f"{op}: operands were made under different keys")
        if other.level != self.level or abs(other.scale / self.scale - 1) > 1e-12:
            raise ConfigurationError(
                f"{op}: operands differ in level or scale ({self!r} vs {other!r}); compute "
                "them along paths of the same depth")
        return other

    def add(self, other: SlotVector) -> SlotVector:
        out = seal().Ciphertext()
        self.ctx.evaluator.add(self.ct, self._aligned(other, "add").ct, out)
        return self._new(out)

    def sub(self, other: SlotVector) -> SlotVector:
        out = seal().Ciphertext()
        self.ctx.evaluator.sub(self.ct, self._aligned(other, "sub").ct, out)
        return self._new(out)

    def add_plain(self, values: Any) -> SlotVector:
        """Add plaintext ``values`` (encoded at this vector's level and scale)."""
        pt = values if not isinstance(values, np.ndarray) else \
            self.ctx.encode(values, self.level, self.scale)
        out = seal().Ciphertext()
        self.ctx.evaluator.add_plain(self.ct, pt, out)
        return self._new(out)

    def mul_plain(self, pt: Any, pt_scale: float) -> SlotVector:
        """Product with a plaintext encoded at ``pt_scale`` (not rescaled: call :meth:`rescale`)."""
        out = seal().Ciphertext()
        try:
            self.ctx.evaluator.multiply_plain(self.ct, pt, out)
        except RuntimeError as exc:
            if "transparent" not in str(exc):
                raise
            raise ConfigurationError(
                "a plaintext product would be an all-zero (transparent) ciphertext: the "
                "plaintext encodes to zero at this scale; skip zero weights") from exc
        return self._new(out, scale=self.scale * pt_scale)

    def rescale(self) -> SlotVector:
        if self.level == 0:
            raise DepthExhaustedError("rescale at level 0: the ciphertext has no levels left; "
                                      "plan with more depth")
        q = self.ctx.prime(self.level)
        out = seal().Ciphertext()
        self.ctx.evaluator.rescale_to_next(self.ct, out)
        return self._new(out, self.level - 1, self.scale / q)

    def square(self) -> SlotVector:
        """``x**2``, relinearized and rescaled (one level)."""
        return self.square_raw().rescale()

    def square_raw(self) -> SlotVector:
        """``x**2``, relinearized, **not** rescaled (rotate it first: less key-switch noise)."""
        if self.level == 0:
            raise DepthExhaustedError("square at level 0: no levels left; plan with more depth")
        out = seal().Ciphertext()
        self.ctx.evaluator.square(self.ct, out)
        self.ctx.evaluator.relinearize_inplace(out, self.ctx.relin_keys)
        return self._new(out, scale=self.scale * self.scale)

    def multiply(self, other: SlotVector) -> SlotVector:
        """``x * y`` (same level), relinearized and rescaled."""
        return self.multiply_raw(other).rescale()

    def multiply_raw(self, other: SlotVector) -> SlotVector:
        """``x * y`` (same level), relinearized, **not** rescaled."""
        if self.level == 0:
            raise DepthExhaustedError("multiply at level 0: no levels left")
        if not isinstance(other, SlotVector) or other.level != self.level \
                or other.ctx.key_id != self.ctx.key_id:
            raise ConfigurationError("multiply: operands must be at the same level and key")
        out = seal().Ciphertext()
        self.ctx.evaluator.multiply(self.ct, other.ct, out)
        self.ctx.evaluator.relinearize_inplace(out, self.ctx.relin_keys)
        return self._new(out, scale=self.scale * other.scale)

    def mod_down(self, level: int) -> SlotVector:
        """The same values at a lower ``level`` (no rescale: the scale is unchanged)."""
        if level == self.level:
            return self
        if not 0 <= level < self.level:
            raise ConfigurationError(f"mod_down to level {level} from level {self.level}")
        out = seal().Ciphertext()
        self.ctx.evaluator.mod_switch_to(self.ct, self.ctx.parms_id(level), out)
        return self._new(out, level)

    def rotate(self, step: int) -> SlotVector:
        """``out[i] = self[i + step]`` (cyclic); ``step`` must be one of ``ctx.rotations``.

        Only for ciphertexts at a scale of about ``Delta**2`` (a product before its rescale):
        the key-switching noise then vanishes in the rescale (a ConfigurationError otherwise).
        """
        k = int(step) % self.ctx.slots
        if k == 0:
            return self
        if self.scale < 2.0 ** (1.5 * self.ctx.params.scale_bits):
            raise ConfigurationError(
                f"rotate a product before its rescale (scale about Delta**2), not a "
                f"ciphertext at scale 2^{np.log2(self.scale):.1f}: key switching adds noise of "
                "about N * q_max / P times the scale, which only a high scale divides away")
        if k not in self.ctx.rotations:
            raise ConfigurationError(
                f"rotation by {step} needs a Galois key this context lacks (it has "
                f"{list(self.ctx.rotations)[:12]}…); generate it with the plan's rotations")
        out = seal().Ciphertext()
        self.ctx.evaluator.rotate_vector(self.ct, k, self.ctx.galois_keys, out)
        return self._new(out)

    def serialize(self) -> bytes:
        """Envelope ``ckks.slots.vector`` (a fresh encryption goes in SEAL's seeded form)."""
        blob = to_bytes(self._seeded if self._seeded is not None else self.ct)
        header = {"key_id": self.ctx.key_id, "level": self.level, "scale": float(self.scale)}
        return envelope.pack(KIND_VECTOR, frame(header, [blob]),
                             params_hash=self.ctx.params_hash)
