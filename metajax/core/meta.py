"""Pieces shared by every meta-learner: the state pytree, and how per-task
gradients over a task batch are computed and averaged (the *task strategy*).

Task strategies (all give the same numbers, up to float rounding):

* ``"vmap"`` — ``jax.vmap`` over the task axis; right on GPU/TPU, and on CPU for
  dense models.
* ``"map"`` — ``jax.lax.scan`` over tasks, accumulating the gradient: few tasks'
  activations alive at a time, compile time independent of the batch size. The
  loop body holds ``MAP_TASKS_PER_ITERATION`` tasks, whose independent work
  XLA:CPU runs concurrently on its threads.
* ``"unroll"`` — a Python loop inside the one jitted program: each task's
  convolutions stay ordinary (vmapped per-task conv weights become grouped
  convolutions, which XLA:CPU runs slowly); compile time grows with the batch.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax.core.tasks import Task, num_tasks

PyTree = Any
Array = jax.Array
TaskStrategy = Literal["auto", "vmap", "map", "unroll"]
TASK_STRATEGIES = get_args(TaskStrategy)
MAP_TASKS_PER_ITERATION = 2  # 2-core CPU, Conv4 Omniglot MAML: 2.6 s -> 2.0 s per meta-step (RESULTS.md)


class MetaState(NamedTuple):
  """Everything a meta-learner carries between outer steps; one pytree.

  Attributes:
    meta_params: the meta-learned parameters, e.g. ``{"params": ..., "inner_lr": ...}``.
    opt_state: the Optax state of the outer optimizer.
    step: number of outer steps taken, int32 scalar.
    key: PRNG key consumed by on-device task sampling.
  """

  meta_params: PyTree
  opt_state: PyTree
  step: Array
  key: Array


def resolve_strategy(strategy: TaskStrategy, task_batch: Task | None = None) -> str:
  """Maps ``"auto"`` to the measured default for the backend and the inputs.

  ``vmap`` on GPU/TPU, and whenever more than one device is visible (task
  batches sharded over devices, :mod:`metajax.core.distributed`). On a single
  CPU device, ``map`` when examples are images (rank ≥ 3 per example: per-task
  conv weights under ``vmap`` run ~1.8× slower there) and ``vmap`` otherwise
  (~10% faster for dense models); numbers in ``benchmarks/RESULTS.md``.
  """
  if strategy not in TASK_STRATEGIES:
    raise ValueError(f"unknown task strategy {strategy!r}; choose one of {TASK_STRATEGIES}")
  if strategy != "auto":
    return strategy
  images = task_batch is not None and np.ndim(task_batch.x_support) >= 5
  single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
  return "map" if single_cpu and images else "vmap"


def _mean_over_tasks(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)


def map_tasks(fn: Callable[..., PyTree], task_batch: Task, strategy: TaskStrategy, *batched: PyTree) -> PyTree:
  """``fn(task, *per_task)`` for every task; outputs stacked on a leading task axis.

  ``batched`` are further pytrees with the same leading task axis (e.g. per-task
  starting parameters), sliced alongside ``task_batch``.
  """
  strategy = resolve_strategy(strategy, task_batch)
  args = (task_batch, *batched)
  if strategy == "vmap":
    return jax.vmap(fn)(*args)
  if strategy == "map":
    return jax.lax.scan(lambda _, xs: (None, fn(*xs)), None, args, unroll=MAP_TASKS_PER_ITERATION)[1]
  outs = [fn(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(num_tasks(task_batch))]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def mean_task_grads(
    task_grad: Callable[[Task], tuple[PyTree, PyTree]],
    task_batch: Task,
    strategy: TaskStrategy,
) -> tuple[PyTree, PyTree]:
  """Mean over the task batch of ``task_grad(task) -> (grads, metrics)``.

  With ``"map"`` the sum is accumulated in the loop carry, so memory holds
  ``MAP_TASKS_PER_ITERATION`` tasks' backward passes at a time instead of the whole batch's.
  """
  strategy = resolve_strategy(strategy, task_batch)
  if strategy != "map":
    return _mean_over_tasks(map_tasks(task_grad, task_batch, strategy))
  n = num_tasks(task_batch)
  first = jax.tree.map(lambda x: x[0], task_batch)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(task_grad, first))

  def body(total, task):
    out = task_grad(task)
    return jax.tree.map(jnp.add, total, out), None

  total, _ = jax.lax.scan(body, zeros, task_batch, unroll=MAP_TASKS_PER_ITERATION)
  return jax.tree.map(lambda x: x / n, total)


# Entries of a ``meta_params`` dict that are carried state, not learned: the outer optimizer
# never sees them (MAML++'s BatchNorm running statistics, Reptile's carried inner-optimizer state).
CARRIED = ("bn_stats", "inner_state")


def learned(meta_params: PyTree) -> PyTree:
  """``meta_params`` without its :data:`CARRIED` entries: what the outer optimizer updates."""
  if not isinstance(meta_params, dict):
    return meta_params
  return {k: v for k, v in meta_params.items() if k not in CARRIED}


def initial_state(optimizer: optax.GradientTransformation, meta_params: PyTree, key: Array) -> MetaState:
  """The :class:`MetaState` at step 0: ``meta_params``, ``optimizer.init`` of their
  :func:`learned` part, ``key``."""
  return MetaState(meta_params, optimizer.init(learned(meta_params)), jnp.zeros((), jnp.int32), key)


def apply_outer_update(optimizer: optax.GradientTransformation, state: MetaState, grads: PyTree,
                       metrics: dict[str, Array]) -> tuple[MetaState, dict[str, Array]]:
  """``state`` after one ``optimizer`` step of its :func:`learned` meta-parameters along the
  meta-gradient ``grads`` (step + 1), and ``metrics`` with ``grad_norm``, the global norm of
  the gradient ``optimizer`` receives (before any clipping it applies). :data:`CARRIED`
  entries stay as they are (and any gradient ``grads`` holds for them is ignored)."""
  params, grads = learned(state.meta_params), learned(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, params)
  new = optax.apply_updates(params, updates)
  if isinstance(state.meta_params, dict):
    new = {**state.meta_params, **new}
  return MetaState(new, opt_state, state.step + 1, state.key), {**metrics, "grad_norm": optax.tree.norm(grads)}


def mean_and_ci95(values: Array | np.ndarray) -> tuple[float, float]:
  """Mean and half-width of the normal 95% confidence interval of 1-D ``values``."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError("mean_and_ci95: no values")
  half = 1.96 * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
  return float(values.mean()), float(half)
