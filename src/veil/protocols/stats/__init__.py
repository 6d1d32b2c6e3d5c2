"""Joint-statistics kernels, one module per backend, sharing one specification.

Modules, in dependency order: ``options`` (:class:`~veil.protocols.stats.options.Options`, the
one frozen object of a release's options, built by ``veil.stats`` and passed unchanged to the
kernels), ``spec`` (what to compute, per-party sufficient statistics, post-processing, the
plaintext oracle), ``order`` (order-statistic positions), ``shares`` (openings and moments on
shares), ``rows`` (order statistics and regressions on secret-shared rows), ``dp_order``
(differentially private rank searches), ``secret`` (the MPC backend), ``homomorphic`` (the
Paillier and CKKS roles: ``KeyHolder``, ``SumAggregator``, data owners).
"""
