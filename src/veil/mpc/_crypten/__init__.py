"""Everything Veil changes in CrypTen, torch and the standard library, installed in order.

Modules: ``compat`` (import crypten on current torch), ``rng`` (CSPRNG for every share, mask and
triple), ``messages`` (pickle-free object messages).
"""
