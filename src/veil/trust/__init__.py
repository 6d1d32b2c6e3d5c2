"""Trust: party identities, session manifests, TLS channels and keys at rest.

This folder sits on the foundation floor, just above :mod:`veil.errors` and below ``mpc``,
``he`` and ``privacy``, which all use it:

* :mod:`veil.trust.seal` encrypts secrets written to disk (AES-256-GCM under a key derived
  from a passphrase with scrypt, or under a key file);
* :mod:`veil.trust.identity` makes and loads party identities (a P-256 key and a self-signed
  certificate; the key sealed at rest);
* :mod:`veil.trust.manifest` reads a session manifest (who takes part, at which address, with
  which certificate);
* :mod:`veil.trust.tls` builds mutually authenticated TLS 1.3 contexts pinned to a manifest.
"""
