"""Paillier encryption (phe-compatible) with Veil's fast paths.

Modules, lowest first: ``arith`` (DJN short-exponent encryption, fixed-base tables, CRT
decryption), ``wire`` (payload bodies), ``core`` (the public key's arithmetic, shared by keys and
vectors), ``parallel`` (process pool), ``native`` (conversion to and from phe's own objects),
``vector`` (:class:`PaillierVector`), ``packed`` (:class:`PackedPaillierVector`, many values per
ciphertext), ``keys`` (key pair, public and private keys).
"""

from veil.he.paillier.keys import PaillierKeyPair, PaillierPrivateKey, PaillierPublicKey
from veil.he.paillier.packed import PackedPaillierVector
from veil.he.paillier.vector import PaillierVector

__all__ = ["PaillierKeyPair", "PaillierPublicKey", "PaillierPrivateKey", "PaillierVector",
           "PackedPaillierVector"]
