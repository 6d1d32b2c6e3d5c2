"""Packing many fixed-point values into one Paillier plaintext, for sums and aggregation.

Layout: each value ``x`` becomes ``v = round(x · 2^precision_bits)`` with ``|v| ≤ B`` (``B`` from
the declared ``max_abs``), stored offset as ``u = v + B ∈ [0, 2B]`` in a slot of
``bits(2·B·max_addends)`` bits. A plaintext holds ``⌊(bits(n) − 1) / slot_bits⌋`` slots, so it stays
below ``n``. Adding ``k ≤ max_addends`` packed vectors adds slot-wise without carries (each slot
stays below ``2·k·B < 2^slot_bits``); decoding subtracts ``k·B``. The number of addends is public
metadata; adding beyond ``max_addends`` is refused before computing.

Cost: one encryption (and one decryption) per ``slots`` values, e.g. 66 values with
``|x| ≤ 1000``, 16 fractional bits and 10 addends under a 2048-bit key. What is revealed: the
layout and addend count, to anyone holding the vector; values, only to the key holder. A malicious
encryptor can put values outside the slot range and corrupt neighbouring slots of the sum; this is
not detectable without range proofs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gmpy2 import mpz

from veil.errors import (
    ConfigurationError,
    KeyMismatchError,
    SerializationError,
    UnsupportedOperationError,
)
from veil.he.encoding import (
    MAX_PRECISION_BITS,
    FixedPointEncoding,
    as_plain_array,
    decode_ints,
    encode_array,
    is_integer_array,
)
from veil.he.paillier import wire
from veil.he.paillier.core import Ciphertexts, check_workers
from veil.he.paillier.parallel import decrypt_residues, encrypt_residues

MAX_ADDENDS = 1 << 40


@dataclass(frozen=True)
class PackingLayout:
    """Slot layout of packed plaintexts for one key size."""

    encoding: FixedPointEncoding
    max_addends: int
    slot_bits: int
    slots: int

    @classmethod
    def create(cls, n_bits: int, encoding: FixedPointEncoding, max_addends: int) -> PackingLayout:
        if isinstance(max_addends, bool) or not isinstance(max_addends, (int, np.integer)):
            raise ConfigurationError(f"max_addends must be an int, got {max_addends!r}")
        max_addends = int(max_addends)
        if not 1 <= max_addends <= MAX_ADDENDS:
            raise ConfigurationError(
                f"max_addends={max_addends} is outside 1..{MAX_ADDENDS}; it is the most "
                "packed vectors that will be added together"
            )
        slot_bits = (2 * encoding.bound * max_addends).bit_length()
        slots = (n_bits - 1) // slot_bits
        if slots < 1:
            raise ConfigurationError(
                f"a slot needs {slot_bits} bits, more than a {n_bits}-bit key holds; lower "
                "max_abs, precision_bits or max_addends"
            )
        return cls(encoding, max_addends, slot_bits, slots)

    @property
    def offset(self) -> int:
        return self.encoding.bound


def _pack_chunk(us: list[int], slot_bits: int) -> int:
    m = 0
    for u in reversed(us):
        m = (m << slot_bits) | u
    return m


def encrypt_packed(
    pk: Any,
    x: Any,
    precision_bits: int,
    max_addends: int,
    max_abs: float,
    workers: int,
    crt: Any,
) -> PackedPaillierVector:
    """Encode ``x`` slot-wise and encrypt one ciphertext per ``slots`` values."""
    workers = check_workers(workers)
    arr = as_plain_array(x)
    enc = FixedPointEncoding(precision_bits, max_abs)
    layout = PackingLayout.create(pk.bits, enc, max_addends)
    enc.check_range(arr)
    off, sb, k = layout.offset, layout.slot_bits, layout.slots
    us = [v + off for v in encode_array(arr, enc.precision_bits)]
    plain = [_pack_chunk(us[i : i + k], sb) for i in range(0, len(us), k)]
    cs = encrypt_residues(pk, plain, crt, workers)
    return PackedPaillierVector._make(
        pk, cs, layout, arr.shape, addends=1, integer=is_integer_array(arr), fresh=True
    )


class PackedPaillierVector(Ciphertexts):
    """Values packed several per ciphertext; supports ``+`` with packed vectors of the same key,
    layout and shape, up to ``max_addends`` addends in total, and decryption to numpy."""

    __slots__ = ("_pk", "_c", "_layout", "_shape", "_addends", "_integer", "_fresh")
    __array_ufunc__ = None
    wire_kind = wire.KIND_PACKED
    wire_what = "packed Paillier vector"

    @classmethod
    def _make(
        cls,
        pk: Any,
        cs: list[mpz],
        layout: PackingLayout,
        shape: tuple[int, ...],
        *,
        addends: int,
        integer: bool,
        fresh: bool,
    ) -> PackedPaillierVector:
        self = cls.__new__(cls)
        self._pk, self._c, self._layout, self._shape = pk, list(cs), layout, tuple(shape)
        self._addends, self._integer, self._fresh = addends, integer, fresh
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def addends(self) -> int:
        """How many packed vectors were added into this one (public)."""
        return self._addends

    @property
    def max_addends(self) -> int:
        return self._layout.max_addends

    @property
    def slots_per_ciphertext(self) -> int:
        return self._layout.slots

    @property
    def num_ciphertexts(self) -> int:
        return len(self._c)

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d PackedPaillierVector")
        return self._shape[0]

    def __repr__(self) -> str:
        return (
            f"PackedPaillierVector(shape={self._shape}, addends={self._addends}/"
            f"{self.max_addends}, slots={self._layout.slots}, key={self._pk.fingerprint})"
        )

    def __add__(self, other: Any) -> PackedPaillierVector:
        if type(other) is int and other == 0:  # lets sum([...]) start from 0
            return self
        if not isinstance(other, PackedPaillierVector):
            raise ConfigurationError(
                f"a PackedPaillierVector adds only to another PackedPaillierVector, got "
                f"{type(other).__name__}"
            )
        if self._pk._n != other._pk._n:
            raise KeyMismatchError(
                f"cannot add packed vectors under different keys ({self._pk.fingerprint} vs "
                f"{other._pk.fingerprint})"
            )
        if self._layout != other._layout or self._shape != other._shape:
            raise ConfigurationError(
                f"packed vectors differ in layout or shape ({self._shape}, {self._layout} vs "
                f"{other._shape}, {other._layout}); encrypt all with the same precision_bits, "
                "max_abs, max_addends and shape"
            )
        total = self._addends + other._addends
        if total > self._layout.max_addends:
            raise ConfigurationError(
                f"adding would make {total} addends, more than max_addends="
                f"{self._layout.max_addends} this packing has headroom for (slots would "
                "overflow); encrypt with a larger max_addends"
            )
        n2 = self._pk._n2
        cs = [a * b % n2 for a, b in zip(self._c, other._c)]
        return PackedPaillierVector._make(
            self._pk, cs, self._layout, self._shape, addends=total,
            integer=self._integer and other._integer, fresh=False,
        )

    __radd__ = __add__

    def _unsupported(self, *_: Any) -> PackedPaillierVector:
        raise UnsupportedOperationError(
            "a PackedPaillierVector only supports + with packed vectors (aggregation); encrypt "
            "with encrypt() for subtraction or products with plaintexts"
        )

    __sub__ = __rsub__ = __mul__ = __rmul__ = __neg__ = __matmul__ = _unsupported

    def rerandomize(self) -> PackedPaillierVector:
        """Same plaintexts under fresh randomness."""
        return PackedPaillierVector._make(
            self._pk, self._rerandomized(self._c), self._layout, self._shape, addends=self._addends,
            integer=self._integer, fresh=True,
        )

    def _decrypt_with(self, crt: Any, workers: int = 1) -> np.ndarray:
        lay = self._layout
        sb, k, size = lay.slot_bits, lay.slots, self.size
        mask = (mpz(1) << sb) - 1
        shift = self._addends * lay.offset
        vals: list[int] = []
        for m in decrypt_residues(crt, self._c, workers):
            take = min(k, size - len(vals))
            vals.extend(int((m >> (sb * j)) & mask) - shift for j in range(take))
        prec = lay.encoding.precision_bits
        return decode_ints(vals, self._shape, scale_bits=prec, integer=self._integer)

    def _write_body(self, w: wire.Writer) -> None:
        lay = self._layout
        w.u16(lay.encoding.precision_bits)
        w.f64(lay.encoding.max_abs)
        w.u64(lay.max_addends)
        w.u64(self._addends)
        w.shape(self._shape)
        w.ciphertexts(self._c, self._pk._width)

    @classmethod
    def _read_body(cls, r: wire.Reader, flags: int, pk: Any) -> PackedPaillierVector:
        """Checks the layout and the counts (and the ciphertexts)."""
        prec, max_abs, max_addends, addends = r.u16(), r.f64(), r.u64(), r.u64()
        if prec > MAX_PRECISION_BITS:
            raise r.fail(f"precision {prec} out of range")
        if not 1 <= addends <= max_addends:
            raise r.fail(f"{addends} addends with max_addends={max_addends}")
        try:
            layout = PackingLayout.create(pk.bits, FixedPointEncoding(prec, max_abs), max_addends)
        except ConfigurationError as exc:
            raise SerializationError(f"malformed packed Paillier vector payload: {exc}") from exc
        remaining = len(r.body) - r.pos
        shape = r.shape(max(remaining // pk._width, 1) * layout.slots)
        count = -(-math.prod(shape) // layout.slots)
        cs = r.ciphertexts(count, pk._width, pk._n)
        r.finish()
        return cls._make(
            pk, cs, layout, shape, addends=addends, integer=bool(flags), fresh=False
        )
