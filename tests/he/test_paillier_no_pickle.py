"""Paillier secret keys never leave the process by pickle or copy (issue 12 item 12)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from veil import he
from veil.errors import UnsupportedOperationError


@pytest.fixture(scope="module")
def keys() -> he.PaillierKeyPair:
    return he.PaillierKeyPair.generate(1024, allow_insecure=True)


@pytest.mark.parametrize("what", ["pair", "private", "crt"])
@pytest.mark.parametrize("how", [pickle.dumps, copy.copy, copy.deepcopy])
def test_secret_key_objects_refuse_pickle_and_copy(keys, what: str, how) -> None:
    obj = {"pair": keys, "private": keys.private_key, "crt": keys.private_key._crt}[what]
    with pytest.raises(UnsupportedOperationError, match="cannot be pickled or copied") as info:
        how(obj)
    assert str(int(obj.p if what == "crt" else keys.private_key._crt.p)) not in str(info.value)
    if how is not copy.copy:  # a shallow copy of a list does not copy its items
        with pytest.raises(UnsupportedOperationError):  # also inside a container
            how([obj])


def test_public_parts_and_explicit_serialization_still_work(keys) -> None:
    pk = pickle.loads(pickle.dumps(keys.public_key))
    assert pk == keys.public_key
    back = he.PaillierPrivateKey.load(keys.private_key.serialize(expose_secret=True),
                                      allow_insecure=True)
    v = pk.encrypt(np.arange(4.0))
    np.testing.assert_array_equal(back.decrypt(v), np.arange(4.0))


def test_parallel_workers_still_get_what_they_need(keys) -> None:
    x = np.arange(3000.0)
    np.testing.assert_array_equal(keys.decrypt(keys.encrypt(x, workers=2), workers=2), x)
