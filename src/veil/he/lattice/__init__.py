"""Lattice schemes on TenSEAL: CKKS (approximate reals) and BFV (exact integers).

Modules: ``ckks`` (:class:`CKKSContext`, :class:`CKKSTensor`), ``tensor`` (the encrypted tensor
and its element-wise operations), ``rotations`` (its operations that need Galois keys), ``bfv``
(:class:`BFVContext`, :class:`BFVTensor`), ``base`` (what both schemes' contexts and tensors
share: envelopes, keys, metadata), ``native`` (the one import of tenseal and the translation of
its exceptions; also ``sealapi``, SEAL's own binding inside TenSEAL), ``util`` (shape and
plaintext helpers), ``noise`` (the CKKS noise model behind ``error_bound``: rounding, key
switching, TenSEAL's rotation schedules), ``sealcheck`` (structural checks of SEAL objects
before parsing), and the slot-level layer for low-latency inference: ``slotparams``
(:class:`SlotParams`), ``slotio`` (SEAL objects to and from bytes, checked) and ``slots``
(:class:`SlotContext`, :class:`SlotVector`: rotations by chosen steps with Galois keys for those
steps only).
Import the modules directly; ``veil.he`` re-exports the classes lazily.
"""
