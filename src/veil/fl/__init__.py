"""Federated learning: secure aggregation of client updates and federated averaging.

Secure aggregation, one interface and three backends (``masking``: SecAgg with dropouts, no key
holder; ``paillier`` and ``ckks``: a key holder decrypts only the sum)::

    res = fl.secure_sum({0: u0, 1: u1, 2: u2}, clip=1.0, backend="masking")  # res.total, .mean
    agg = fl.make_aggregator("paillier", num_clients=3, vector_length=d, clip=1.0)
    res = agg.aggregate(updates, dropouts={"masked": [2]})

Federated averaging of a small MLP on scikit-learn's digits, every round through SecAgg, with
optional client-level differential privacy::

    dp = fl.FederatedDP(l2_clip=1.0, noise_multiplier=1.0, delta=1e-5)
    result = fl.train_fedavg(fl.FedAvgConfig(num_clients=8, rounds=10, dp=dp))
    result.accuracy, result.epsilon, result.history  # list of RoundRecord

Modules: ``base`` (the interface: :class:`Aggregator`, results, input checks), ``aggregation``
(masking, :data:`BACKENDS`, :func:`make_aggregator`, :func:`secure_sum`), ``he_backends``
(Paillier, CKKS), ``fedavg`` (the training loop), ``digits`` (the recipe's data and model),
``rounds`` (what a client checks from its own configuration). :class:`FederatedDP` lives in
:mod:`veil.privacy`, the home of every DP mechanism and accountant.
Names are imported lazily: ``import veil.fl`` loads neither numpy, torch nor any crypto library.
"""

from __future__ import annotations

from veil._lazy import lazy_face

# module -> the public names it defines
_EXPORTS: dict[str, tuple[str, ...]] = {
    "aggregation": ("secure_sum", "make_aggregator", "BACKENDS", "MaskingAggregator"),
    "he_backends": ("PaillierAggregator", "CKKSAggregator"),
    "base": ("Aggregator", "AggregationResult", "AggregationStats"),
    "fedavg": ("FedAvgConfig", "FedAvgResult", "RoundRecord", "train_fedavg"),
    "veil.privacy.federated": ("FederatedDP",),
}
_SUBMODULES = ("aggregation", "base", "digits", "fedavg", "he_backends", "rounds")

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS, submodules=_SUBMODULES,
                                   listed=sorted([*__all__, *_SUBMODULES]))
