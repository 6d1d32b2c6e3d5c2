"""Paillier encryption (phe-compatible) with Veil's fast paths.

Modules: ``keys`` (key pair, public and private keys), ``vector`` (:class:`PaillierVector`),
``packed`` (:class:`PackedPaillierVector`, many values per ciphertext), ``arith`` (DJN
short-exponent encryption, fixed-base tables, CRT decryption), ``parallel`` (process pool),
``wire`` (envelopes), ``native`` (conversion to and from phe's own objects).
"""

from veil.he.paillier.keys import (
    PackedPaillierVector,
    PaillierKeyPair,
    PaillierPrivateKey,
    PaillierPublicKey,
    PaillierVector,
)

__all__ = ["PaillierKeyPair", "PaillierPublicKey", "PaillierPrivateKey", "PaillierVector",
           "PackedPaillierVector"]
