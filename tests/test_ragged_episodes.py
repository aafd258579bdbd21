"""Episodes from classes of unequal sizes (``episodes.sample(counts=...)``): padding is never drawn,
valid examples are drawn uniformly, and full counts draw what ``counts=None`` draws."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.data import episodes, folders

COUNTS = np.array([3, 7, 2, 5, 7, 4], np.int32)


def _ragged(counts=COUNTS, width=7, hw=2):
  """Image (c, e) holds 10*c + e for real examples and 255 for padding."""
  values = 10 * np.arange(len(counts))[:, None] + np.arange(width)[None]
  values = np.where(np.arange(width)[None] < counts[:, None], values, 255).astype(np.uint8)
  return jnp.asarray(np.broadcast_to(values[:, :, None, None], (len(counts), width, hw, hw)).copy())


def _ids(x):
  return np.rint(np.asarray(x[..., 0, 0, 0]) * 255).astype(int)


def test_padding_is_never_drawn_and_examples_are_distinct():
  draw = jax.jit(lambda k: episodes.sample(k, _ragged(), num_tasks=200, ways=4, shots=1, queries=1,
                                           counts=COUNTS))  # concrete, like groups
  tasks = draw(jax.random.PRNGKey(0))
  ids = np.concatenate([_ids(tasks.x_support), _ids(tasks.x_query)], axis=1)
  assert (ids != 255).all()
  assert (ids % 10 < COUNTS[ids // 10]).all()
  for row in ids:
    assert len(set(row.tolist())) == len(row)


def test_valid_examples_are_drawn_uniformly():
  counts = np.array([5, 2, 5], np.int32)
  tasks = episodes.sample(jax.random.PRNGKey(1), _ragged(counts, width=5), num_tasks=3000, ways=3, shots=1,
                          queries=1, counts=counts)
  ids = np.concatenate([_ids(tasks.x_support), _ids(tasks.x_query)], axis=1).ravel()
  for c, n in enumerate(counts):
    freq = np.bincount(ids[ids // 10 == c] % 10, minlength=5)[:n] / (ids // 10 == c).sum()
    np.testing.assert_allclose(freq, 1 / n, atol=0.03)  # ~6000 draws per class: 3 sigma is ~0.02


def test_full_counts_and_none_draw_the_same_examples():
  images = _ragged(np.full(6, 7, np.int32))
  kw = dict(num_tasks=10, ways=3, shots=2, queries=3)
  a = episodes.sample(jax.random.PRNGKey(2), images, **kw)
  b = episodes.sample(jax.random.PRNGKey(2), images, counts=np.full(6, 7), **kw)
  np.testing.assert_array_equal(a.x_support, b.x_support)
  np.testing.assert_array_equal(a.x_query, b.x_query)


def test_groups_and_counts_together():
  groups = jnp.asarray([0, 0, 0, 1, 1, 1])
  tasks = episodes.sample(jax.random.PRNGKey(3), _ragged(), num_tasks=50, ways=3, shots=1, queries=1,
                          groups=groups, counts=COUNTS)
  ids = _ids(tasks.x_support)
  assert all(len({int(groups[c]) for c in row // 10}) == 1 for row in ids)
  assert (ids % 10 < COUNTS[ids // 10]).all()


@pytest.mark.parametrize("counts,kw,match", [
    (COUNTS, dict(shots=2, queries=1), "shots \\+ queries = 3 exceeds the 2 examples of the smallest class"),
    (COUNTS[:5], dict(shots=1, queries=1), r"counts must be \(6,\) integers"),
    (COUNTS.astype(float), dict(shots=1, queries=1), r"counts must be \(6,\) integers"),
    (np.array([3, 8, 2, 5, 7, 4]), dict(shots=1, queries=1), r"counts must lie in 1..7"),
    (np.array([3, 0, 2, 5, 7, 4]), dict(shots=1, queries=1), r"counts must lie in 1..7"),
])
def test_bad_counts_are_named(counts, kw, match):
  with pytest.raises(ValueError, match=match):
    episodes.sample(jax.random.PRNGKey(0), _ragged(), num_tasks=2, ways=2, counts=counts, **kw)


def test_pad_stack_reports_counts_only_when_ragged():
  images, counts = folders.pad_stack([np.ones((3, 2)), np.ones((1, 2))])
  assert images.shape == (2, 3, 2) and counts.tolist() == [3, 1] and counts.dtype == np.int32
  assert images[1, 1:].sum() == 0
  assert folders.pad_stack([np.ones((2, 2)), np.ones((2, 2))])[1] is None
