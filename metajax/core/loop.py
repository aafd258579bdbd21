"""The generic multi-step loop: many outer steps in one compiled call, tasks drawn on device."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
from jax.sharding import Mesh

from metajax.core import distributed
from metajax.core.meta import MetaState
from metajax.core.tasks import Task

PyTree = Any


def scan_steps(state: MetaState, data: Optional[PyTree], meta_step: Callable[[MetaState, Task], tuple],
               sample_fn: Callable[..., Task], num_steps: int,
               mesh: Optional[Mesh] = None) -> tuple[MetaState, dict]:
  """``num_steps`` applications of ``meta_step`` inside one ``lax.scan`` (not jitted).

  Each step splits ``state.key`` and draws a task batch with ``sample_fn(subkey)``,
  or ``sample_fn(subkey, data)`` when ``data`` (e.g. an image array) is given:
  pass datasets this way rather than closing over them, so they are not baked
  into the program as constants. With a ``mesh``
  (:func:`metajax.core.distributed.task_mesh`) each batch is sharded over its
  devices along the task axis; pass a replicated ``state``.

  Returns:
    ``(state, metrics)`` with every metric stacked to ``(num_steps,)``.
  """

  def body(s, _):
    key, sub = jax.random.split(s.key)
    batch = sample_fn(sub) if data is None else sample_fn(sub, data)
    if mesh is not None:
      batch = distributed.constrain_tasks(batch, mesh)
    return meta_step(s._replace(key=key), batch)

  return jax.lax.scan(body, state, None, length=num_steps)


@functools.partial(jax.jit, static_argnames=("meta_step", "sample_fn", "num_steps", "mesh"))
def train_steps(state: MetaState, data: Optional[PyTree] = None, *,
                meta_step: Callable[[MetaState, Task], tuple], sample_fn: Callable[..., Task],
                num_steps: int, mesh: Optional[Mesh] = None) -> tuple[MetaState, dict]:
  """:func:`scan_steps` jitted: the host dispatches once per ``num_steps`` steps.

  ``meta_step`` is a :class:`~metajax.core.protocol.MetaLearner`'s; it and
  ``sample_fn`` are static (hashed by identity), so build them once and reuse them.
  """
  return scan_steps(state, data, meta_step, sample_fn, num_steps, mesh)
