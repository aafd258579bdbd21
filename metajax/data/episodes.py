"""On-device N-way K-shot episode sampling from an array of classes × examples."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from metajax.core.tasks import Task
from metajax.core.validate import check_nonnegative_int, check_positive_int


def check_episode_shape(num_classes: int, num_examples: int, ways: int, shots: int, queries: int,
                        counts: Optional[np.ndarray] = None) -> None:
  """Raises ``ValueError`` naming the problem when episodes cannot be drawn; with ``counts``
  (classes of unequal sizes) the smallest class bounds ``shots + queries``."""
  for name, value in (("ways", ways), ("shots", shots)):
    check_positive_int(value, name)
  check_nonnegative_int(queries, "queries")
  if ways > num_classes:
    raise ValueError(f"ways={ways} exceeds the {num_classes} classes available")
  if counts is not None and shots + queries > int(np.min(counts)):
    raise ValueError(f"shots + queries = {shots + queries} exceeds the {int(np.min(counts))} examples of the "
                     "smallest class")
  if shots + queries > num_examples:
    raise ValueError(f"shots + queries = {shots + queries} exceeds the {num_examples} examples per class")


def sample(key: jax.Array, images: jax.Array, *, num_tasks: int, ways: int, shots: int,
           queries: int, groups: Optional[jax.Array] = None, counts: Optional[jax.Array] = None) -> Task:
  """Draws a batch of N-way K-shot tasks; pure and jit-able.

  Per task, ``ways`` distinct classes are drawn and labelled ``0..ways-1`` in a
  random order; per class, ``shots + queries`` distinct examples are drawn, the
  first ``shots`` for the support set and the rest for the query set (so support
  and query never share an example).

  Args:
    key: PRNG key.
    images: ``(classes, examples, h, w)`` or ``(classes, examples, h, w, c)``,
      uint8 (scaled to [0, 1]) or float.
    num_tasks, ways, shots, queries: episode shape.
    groups: optional ``(classes,)`` integer group of each class (e.g. Omniglot's
      alphabet): each task first draws a group, uniformly among those with at least
      ``ways`` classes, then its classes from that group only.
    counts: optional ``(classes,)`` integer number of real examples of each class
      (``ImageClasses.counts``: ``images[c, counts[c]:]`` is padding): each class's
      ``shots + queries`` examples are drawn uniformly without replacement among its
      first ``counts[c]``, never from the padding, and the smallest count bounds
      ``shots + queries``. Like ``groups``, a concrete array (closed over, not traced).
      ``None`` means every example is real; full counts draw the same tasks as ``None``.

  Returns:
    A :class:`Task` batch: ``x_support (num_tasks, ways*shots, h, w, c)`` float32,
    ``y_support (num_tasks, ways*shots)`` int32, and ``x_query`` / ``y_query`` with
    ``ways*queries`` examples, grouped by class.
  """
  if images.ndim not in (4, 5):
    raise ValueError(f"images must be (classes, examples, h, w[, c]); got shape {images.shape}")
  num_classes, num_examples = images.shape[:2]
  if counts is not None:
    counts = _valid_counts(counts, num_classes, num_examples)
  check_episode_shape(num_classes, num_examples, ways, shots, queries, counts)
  scale = 1.0 / 255.0 if images.dtype == jnp.uint8 else 1.0
  eligible = None if groups is None else _eligible_groups(groups, num_classes, ways)

  def examples(k, count):
    """``shots + queries`` distinct indices below ``count``, uniformly: a random permutation with the
    indices from ``count`` on moved behind the others (a stable sort: their random order is kept)."""
    order = jax.random.permutation(k, num_examples)
    if counts is not None:
      order = order[jnp.argsort(order >= count, stable=True)]
    return order[: shots + queries]

  def one(k):
    k_group, k_classes, k_examples = jax.random.split(k, 3)
    if eligible is None:
      classes = jax.random.choice(k_classes, num_classes, (ways,), replace=False)
    else:
      group = jax.random.choice(k_group, eligible)
      members = (groups == group).astype(jnp.float32)
      classes = jax.random.choice(k_classes, num_classes, (ways,), replace=False, p=members / members.sum())
    class_counts = jnp.full(ways, num_examples) if counts is None else jnp.asarray(counts)[classes]
    order = jax.vmap(examples)(jax.random.split(k_examples, ways), class_counts)
    picked = images[classes[:, None], order].astype(jnp.float32) * scale
    if picked.ndim == 4:
      picked = picked[..., None]
    feature = picked.shape[2:]
    labels = jnp.arange(ways, dtype=jnp.int32)
    return Task(picked[:, :shots].reshape(ways * shots, *feature), jnp.repeat(labels, shots),
                picked[:, shots:].reshape(ways * queries, *feature), jnp.repeat(labels, queries))

  return jax.vmap(one)(jax.random.split(key, num_tasks))


def _eligible_groups(groups: jax.Array, num_classes: int, ways: int) -> jax.Array:
  """The group ids with at least ``ways`` classes; a clear error when the labels are off."""
  groups = np.asarray(groups)
  if groups.shape != (num_classes,) or not np.issubdtype(groups.dtype, np.integer):
    raise ValueError(f"groups must be ({num_classes},) integers, one per class; got {groups.dtype} {groups.shape}")
  ids, counts = np.unique(groups, return_counts=True)
  if not (counts >= ways).any():
    raise ValueError(f"no group has ways={ways} classes (the largest has {counts.max()})")
  return jnp.asarray(ids[counts >= ways])


def _valid_counts(counts: jax.Array, num_classes: int, num_examples: int) -> np.ndarray:
  """``counts`` as int32 numpy, with a clear error when they do not fit the images."""
  counts = np.asarray(counts)
  if counts.shape != (num_classes,) or not np.issubdtype(counts.dtype, np.integer):
    raise ValueError(f"counts must be ({num_classes},) integers, one per class; got {counts.dtype} {counts.shape}")
  if counts.min() < 1 or counts.max() > num_examples:
    raise ValueError(f"counts must lie in 1..{num_examples} (the examples axis); got {counts.min()}..{counts.max()}")
  return counts.astype(np.int32)
