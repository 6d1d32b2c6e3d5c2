"""Everything Veil changes in CrypTen, torch and the standard library, installed in order.

The face: :func:`import_crypten` (CrypTen with the import-stage patches), :func:`install` (every
patch a party or dealer process needs, once per process) and :data:`PATCHES`, the ordered table
of patch points (:mod:`veil.mpc._crypten.patches`). The patches themselves live in ``compat``
(import crypten on current torch, the decoder fix), ``rng`` (CSPRNG for every share, mask and
triple), ``messages`` (pickle-free object messages) and :mod:`veil.mpc.accounting`.
"""

from veil.mpc._crypten.patches import PATCHES, PatchPoint, applied, import_crypten, install

__all__ = ["PATCHES", "PatchPoint", "applied", "import_crypten", "install"]
