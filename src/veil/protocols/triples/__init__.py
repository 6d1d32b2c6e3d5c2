"""Dealer-free correlated randomness for two-party MPC (issue #16).

Modules (imported explicitly, e.g. ``from veil.protocols.triples import arith``): ``arith``
(arithmetic Beaver triples and squares over Z_{2^64} by Paillier oblivious linear evaluation).
``ot`` (base 1-out-of-2 random OT from X25519), ``iknp`` (IKNP OT extension: millions of random
OTs from 128 base OTs), ``binary`` (binary AND Beaver triples from 2 random OTs per triple).
``gilboa`` (fast arithmetic triples and squares over Z_{2^64} by Gilboa's OT multiplication on
IKNP, 128 OTs per triple; a drop-in for ``arith``).
"""
