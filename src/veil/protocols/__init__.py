"""Multi-party protocol kernels built on ``veil.mpc``, ``veil.he`` and ``veil.privacy``.

Folders and modules (imported explicitly, e.g. ``from veil.protocols.stats import spec``):
``stats/`` (joint-statistics kernels, one per backend), ``secagg/`` (secure aggregation with
dropouts), ``inference`` (encrypted-inference messages), ``prg`` (seeds, HKDF, ring
expansion), ``shamir`` (Shamir secret sharing over a prime field).
"""
