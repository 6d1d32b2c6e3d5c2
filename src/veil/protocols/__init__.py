"""Multi-party protocols built on ``veil.mpc`` and ``veil.he``.

Submodules (imported explicitly, e.g. ``from veil.protocols import aggregation``):
``aggregation`` (secure aggregation), ``statistics`` (joint-statistics kernels), ``inference``
(encrypted-inference messages), ``fedavg`` (federated averaging).
"""
