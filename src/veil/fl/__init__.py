"""Federated learning: secure aggregation of client updates and federated averaging.

Modules: ``aggregation`` (one interface, three backends: masking, Paillier, CKKS), ``he_backends``
(the two homomorphic backends), ``fedavg`` (federated averaging with secure aggregation and
optional differential privacy), ``rounds`` (what a client checks from its own configuration).
"""
