"""The task pytree and its validation.

A task holds a support set (used to adapt) and a query set (used to score the
adaptation). A *task batch* is the same pytree with a leading task axis on every
leaf; algorithms ``vmap`` (or map) over that axis.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

Array = jax.Array


class Task(NamedTuple):
  """One few-shot task, or a batch of them (leading task axis on every field).

  Attributes:
    x_support: ``(n_support, *feature_shape)`` inputs to adapt on.
    y_support: ``(n_support, *target_shape)`` targets for ``x_support``.
    x_query: ``(n_query, *feature_shape)`` inputs to evaluate on.
    y_query: ``(n_query, *target_shape)`` targets for ``x_query``.
  """

  x_support: Array
  y_support: Array
  x_query: Array
  y_query: Array


def num_tasks(task_batch: Task) -> int:
  """Size of the leading task axis of a task batch."""
  return int(np.shape(task_batch.x_support)[0])


def check_task(task: Task, *, batched: bool) -> None:
  """Raises ``ValueError`` naming the problem if ``task`` is malformed.

  Shapes are static under ``jax.jit``, so this is safe to call while tracing.

  Args:
    task: a :class:`Task` (``batched=False``) or a task batch (``batched=True``).
    batched: whether every field should carry a leading task axis.
  """
  if not isinstance(task, Task):
    raise TypeError(f"expected a metajax Task, got {type(task).__name__}")
  shapes = {name: tuple(np.shape(value)) for name, value in task._asdict().items()}
  lead = 1 if batched else 0
  what = "task batch" if batched else "task"
  for name, shape in shapes.items():
    if len(shape) < lead + 1:
      expected = "(tasks, examples, ...)" if batched else "(examples, ...)"
      raise ValueError(
          f"{what}: {name} has shape {shape}; expected at least {expected}"
          + (" — did you pass a single task where a batch is expected?"
             if batched else ""))
  if batched:
    counts = {shape[0] for shape in shapes.values()}
    if len(counts) != 1:
      raise ValueError(f"task batch: fields disagree on the number of tasks: {shapes}")
  xs, ys = shapes["x_support"], shapes["y_support"]
  xq, yq = shapes["x_query"], shapes["y_query"]
  if xs[lead] == 0:
    raise ValueError(f"{what}: the support set is empty (x_support shape {xs})")
  if xs[lead] != ys[lead]:
    raise ValueError(
        f"{what}: x_support has {xs[lead]} examples but y_support has {ys[lead]} "
        f"(shapes {xs} vs {ys})")
  if xq[lead] != yq[lead]:
    raise ValueError(
        f"{what}: x_query has {xq[lead]} examples but y_query has {yq[lead]} "
        f"(shapes {xq} vs {yq})")
  if xs[lead + 1:] != xq[lead + 1:]:
    raise ValueError(
        f"{what}: support and query feature shapes differ: x_support {xs[lead + 1:]} "
        f"vs x_query {xq[lead + 1:]}")
  if ys[lead + 1:] != yq[lead + 1:]:
    raise ValueError(
        f"{what}: support and query target shapes differ: y_support {ys[lead + 1:]} "
        f"vs y_query {yq[lead + 1:]}")
