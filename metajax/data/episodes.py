"""On-device N-way K-shot episode sampling from an array of classes × examples."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from metajax.core.tasks import Task
from metajax.core.validate import check_nonnegative_int, check_positive_int


def check_episode_shape(num_classes: int, num_examples: int, ways: int, shots: int, queries: int) -> None:
  """Raises ``ValueError`` naming the problem when episodes cannot be drawn."""
  for name, value in (("ways", ways), ("shots", shots)):
    check_positive_int(value, name)
  check_nonnegative_int(queries, "queries")
  if ways > num_classes:
    raise ValueError(f"ways={ways} exceeds the {num_classes} classes available")
  if shots + queries > num_examples:
    raise ValueError(f"shots + queries = {shots + queries} exceeds the {num_examples} examples per class")


def sample(key: jax.Array, images: jax.Array, *, num_tasks: int, ways: int, shots: int,
           queries: int, groups: Optional[jax.Array] = None) -> Task:
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

  Returns:
    A :class:`Task` batch: ``x_support (num_tasks, ways*shots, h, w, c)`` float32,
    ``y_support (num_tasks, ways*shots)`` int32, and ``x_query`` / ``y_query`` with
    ``ways*queries`` examples, grouped by class.
  """
  if images.ndim not in (4, 5):
    raise ValueError(f"images must be (classes, examples, h, w[, c]); got shape {images.shape}")
  num_classes, num_examples = images.shape[:2]
  check_episode_shape(num_classes, num_examples, ways, shots, queries)
  scale = 1.0 / 255.0 if images.dtype == jnp.uint8 else 1.0
  eligible = None if groups is None else _eligible_groups(groups, num_classes, ways)

  def one(k):
    k_group, k_classes, k_examples = jax.random.split(k, 3)
    if eligible is None:
      classes = jax.random.choice(k_classes, num_classes, (ways,), replace=False)
    else:
      group = jax.random.choice(k_group, eligible)
      members = (groups == group).astype(jnp.float32)
      classes = jax.random.choice(k_classes, num_classes, (ways,), replace=False, p=members / members.sum())
    order = jax.vmap(lambda kk: jax.random.permutation(kk, num_examples)[: shots + queries])(
        jax.random.split(k_examples, ways))
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
