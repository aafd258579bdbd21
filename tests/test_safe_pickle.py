"""Pickles of numpy arrays read without trusting them (metajax.data.safe_pickle)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from metajax.data.safe_pickle import UnsafePickleError, loads

_RECONSTRUCT = pickle.loads(pickle.dumps(np.zeros(1), protocol=2)).__reduce__()[0]  # numpy's array builder


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_arrays_and_containers_round_trip(protocol):
  rng = np.random.default_rng(0)
  table = {b"data": rng.integers(0, 256, (4, 12), dtype=np.uint8), "labels": [3, 1, 2, 0],
           "f32": rng.normal(size=(2, 3)).astype(np.float32), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
           "big_endian": np.arange(5, dtype=">i4"), "names": (b"apple", "pear"), "empty": np.zeros((0, 3), np.int64)}
  got = loads(pickle.dumps(table, protocol=protocol))
  assert set(got) == set(table)
  for key, value in table.items():
    if isinstance(value, np.ndarray):
      np.testing.assert_array_equal(got[key], value)
      assert got[key].dtype == value.dtype and got[key].shape == value.shape
    else:
      assert got[key] == value


class _Reduce:
  """Pickles as ``callable(*args)`` followed by ``BUILD state``."""

  def __init__(self, *reduced):
    self.reduced = reduced

  def __reduce__(self):
    return self.reduced


# A dtype laying an object field over raw bytes (numpy accepts the state): reading the field
# dereferences pickle-controlled bytes as a pointer.
_OBJECT_OVER_BYTES = _Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))


@pytest.mark.parametrize("payload, message", [
    (_Reduce(eval, ("1 + 1",)), r"__builtin__\.eval"),
    (_OBJECT_OVER_BYTES, "does not describe a plain array"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), _OBJECT_OVER_BYTES, False, b"A" * 8)),
     "plain numeric or string arrays"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (3,), np.dtype("O"), False, [1, 2, 3])),
     "plain numeric or string arrays"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (4,), np.dtype("u1"), False, b"xy")),
     "does not match its shape"),
])
def test_anything_but_plain_arrays_is_refused_unrun(payload, message):
  with pytest.raises(UnsafePickleError, match=message):
    loads(pickle.dumps({"data": payload}, protocol=2), "crafted")


def test_setting_state_on_a_named_global_is_refused():
  """BUILD on the numpy function a GLOBAL names (e.g. to rewrite its defaults) never reaches numpy."""
  crafted = b"cnumpy.core.numeric\n_frombuffer\n(dS'__defaults__'\n(I1\ntsb."
  with pytest.raises(UnsafePickleError, match="refusing to set the state of a function"):
    loads(crafted, "crafted")
  assert np.frombuffer(b"\x01\x02", np.uint8).tolist() == [1, 2]


def test_shared_references_are_resolved_once():
  """A pickle's memo refers to one object many times for two bytes each: resolving each reference
  anew would turn a tiny pickle into exponential time or many copies of one array."""
  nested = data = np.arange(1000, dtype=np.float32)
  for _ in range(60):  # 2**60 leaves if expanded
    nested = [nested, nested]
  got = loads(pickle.dumps(nested, protocol=2))
  for _ in range(60):
    assert got[0] is got[1]
    got = got[0]
  np.testing.assert_array_equal(got, data)


@pytest.mark.parametrize("payload, message", [
    (lambda: (cycle := [], cycle.append(cycle))[0], "contains itself"),
    (lambda: {frozenset({1, 2})}, "refusing a set"),
    (lambda: _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (2**64,) * 40_000, np.dtype("u1"), False, b"")),
     "does not match its shape"),
])
def test_cycles_sets_and_absurd_shapes_are_refused(payload, message):
  with pytest.raises(UnsafePickleError, match=message):  # protocol 4 writes sets with its own opcodes
    loads(pickle.dumps(payload(), protocol=4), "crafted")


def test_a_bare_global_is_not_handed_back():
  crafted = b"cnumpy\ndtype\n."  # GLOBAL numpy.dtype, STOP: the allowed name itself, uncalled
  with pytest.raises(UnsafePickleError, match="refusing a function"):
    loads(crafted, "crafted")
