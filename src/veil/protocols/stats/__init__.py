"""Joint-statistics kernels, one module per backend, sharing one specification.

Modules: ``spec`` (what to compute, per-party sufficient statistics, post-processing, the
plaintext oracle), ``secret`` (the MPC backend), ``shares`` (openings and moments on shares),
``rows`` (order statistics and regressions on secret-shared rows), ``dp_order`` (differentially
private rank searches), ``homomorphic`` (the Paillier and CKKS backends).
"""
