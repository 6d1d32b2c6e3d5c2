"""Lattice schemes on TenSEAL: CKKS (approximate reals) and BFV (exact integers).

Modules: ``ckks`` (:class:`CKKSContext`, :class:`CKKSTensor`), ``tensor`` (the encrypted tensor
and its element-wise operations), ``rotations`` (its operations that need Galois keys), ``bfv``
(:class:`BFVContext`, :class:`BFVTensor`), ``base`` (what both schemes' contexts and tensors
share: envelopes, keys, metadata), ``native`` (the one import of tenseal and the translation of
its exceptions), ``util`` (shape and plaintext helpers).
Import the modules directly; ``veil.he`` re-exports the classes lazily.
"""
