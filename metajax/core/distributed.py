"""Data parallelism over tasks: a 1-D device mesh, task batches sharded along it,
meta-parameters replicated.

Every meta-step in metajax is one ``jit``-compiled function of ``(state,
task_batch)``; given a task batch sharded over the ``"tasks"`` mesh axis and a
replicated state, XLA partitions the per-task work across devices and turns the
mean over tasks into an all-reduce. So the algorithms need no change:

    mesh = distributed.task_mesh("all")
    state = distributed.replicate(state, mesh)
    batch = distributed.shard_tasks(batch, mesh)       # task axis split over devices
    state, metrics = maml.meta_step(state, batch, config=config)

The same code runs multi-host: after ``jax.distributed.initialize(...)`` the mesh
spans every process's devices and :func:`shard_tasks` takes each process's *local*
slice of the task batch (``jax.make_array_from_process_local_data``).
With a mesh, use ``task_strategy="vmap"`` (``"auto"`` picks it when more than one
device is visible): a ``map`` over a sharded task axis would run tasks one at a time.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
AXIS = "tasks"


def task_mesh(devices: Union[str, int, Sequence[jax.Device]] = "all") -> Mesh:
  """A 1-D mesh with axis ``"tasks"`` over ``"all"`` devices, the first ``n``, or a list."""
  available = jax.devices()
  if isinstance(devices, str):
    if devices != "all":
      raise ValueError(f"devices must be 'all', a positive int or a list of devices, got {devices!r}")
    chosen = available
  elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
    if not 1 <= devices <= len(available):
      raise ValueError(f"devices={devices} but {len(available)} device(s) are available")
    chosen = available[:devices]
  else:
    chosen = list(devices)
    if not chosen:
      raise ValueError("devices: empty device list")
  return Mesh(np.asarray(chosen), (AXIS,))


def task_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (task) axis split over the mesh, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """``tree`` (e.g. a ``MetaState``) replicated on every device of ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def check_divisible(num_tasks: int, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless ``num_tasks`` splits evenly over the mesh."""
  if num_tasks % mesh.size:
    raise ValueError(f"the task batch ({num_tasks} tasks) must divide evenly over {mesh.size} devices")


def shard_tasks(batch: PyTree, mesh: Mesh) -> PyTree:
  """The task batch sharded along its leading axis over ``mesh``.

  Single process: ``batch`` is the whole batch. Multi-process: ``batch`` is this
  process's slice (``global_tasks / process_count`` tasks), and the result is the
  global array.
  """
  sharding = task_sharding(mesh)
  n = jax.tree.leaves(batch)[0].shape[0]
  if jax.process_count() == 1:
    check_divisible(n, mesh)
    return jax.device_put(batch, sharding)
  check_divisible(n * jax.process_count(), mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def constrain_tasks(batch: PyTree, mesh: Mesh) -> PyTree:
  """Inside ``jit``: asks XLA to keep a batch drawn on device sharded over tasks."""
  check_divisible(jax.tree.leaves(batch)[0].shape[0], mesh)
  return jax.lax.with_sharding_constraint(batch, task_sharding(mesh))
