"""Meta-learners whose whole task computation is one differentiable function.

Metric-based learners (Prototypical, Matching, Relation networks), the black-box
RNN learner and the Meta-LSTM all map ``(params, task)`` to query predictions in
one forward pass (whatever adaptation they do happens inside it), and are
meta-trained by descending the mean query loss. They share this module's
:func:`init`, :func:`meta_step` and :func:`evaluate`, which have the shapes of
:mod:`metajax.maml`'s, so the harness runs every learner the same way.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from metajax.core import losses
from metajax.core.meta import MetaState, TaskStrategy, map_tasks, mean_task_grads, resolve_strategy
from metajax.core.tasks import Task, check_task

PyTree = Any
Array = jax.Array
PredictFn = Callable[[PyTree, Task], Array]


def accuracy_metrics(logits: Array, labels: Array) -> dict:
  """``{"accuracy": scalar}`` of ``(n, classes)`` logits against ``(n,)`` labels."""
  return {"accuracy": losses.accuracy(logits, labels)}


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Static configuration of a forward-pass meta-learner (a ``jit`` static argument).

  Attributes:
    predict_fn: ``(params, task) -> predictions`` for the ``n_query`` examples of
      one (unbatched) task, e.g. ``(n_query, ways)`` logits.
    loss_fn: ``(predictions, y_query) -> scalar``.
    metrics_fn: optional ``(predictions, y_query) -> {name: scalar}``.
    optimizer: the Optax optimizer over all parameters.
    task_strategy: how the task axis runs, see :mod:`metajax.core.meta`.
  """

  predict_fn: PredictFn
  loss_fn: Callable[[Array, Array], Array] = losses.cross_entropy
  metrics_fn: Optional[Callable[[Array, Array], dict]] = accuracy_metrics
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  task_strategy: TaskStrategy = "auto"

  def __post_init__(self):
    if not callable(self.predict_fn):
      raise TypeError("LearnerConfig: predict_fn must be callable (params, task) -> predictions")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError("LearnerConfig: optimizer must be an optax.GradientTransformation")
    resolve_strategy(self.task_strategy)


def check_ways(ways: Any, who: str) -> int:
  """``ways`` if it is an int >= 2, else a ``ValueError`` naming ``who``."""
  if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
    raise ValueError(f"{who}: ways must be an integer >= 2, got {ways!r}")
  return ways


def init(config: LearnerConfig, params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState` (``meta_params = {"params": params}``)."""
  meta_params = {"params": params}
  return MetaState(meta_params, config.optimizer.init(meta_params), jnp.zeros((), jnp.int32), key)


def task_loss(config: LearnerConfig, meta_params: PyTree, task: Task) -> tuple[Array, dict]:
  """``(loss, {"loss", *metrics_fn})`` of one task's query set."""
  pred = config.predict_fn(meta_params["params"], task)
  loss = config.loss_fn(pred, task.y_query)
  metrics = {"loss": loss}
  if config.metrics_fn is not None:
    metrics.update(config.metrics_fn(pred, task.y_query))
  return loss, metrics


@functools.partial(jax.jit, static_argnames=("config",))
def meta_step(state: MetaState, task_batch: Task, *, config: LearnerConfig) -> tuple[MetaState, dict]:
  """One optimizer step on the mean query loss of a task batch (fields ``(tasks, n, ...)``)."""
  check_task(task_batch, batched=True)

  def task_grad(task):
    (_, metrics), grads = jax.value_and_grad(task_loss, argnums=1, has_aux=True)(
        config, state.meta_params, task)
    return grads, metrics

  grads, metrics = mean_task_grads(task_grad, task_batch, config.task_strategy)
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.meta_params)
  return MetaState(optax.apply_updates(state.meta_params, updates), opt_state, state.step + 1,
                   state.key), metrics


@functools.partial(jax.jit, static_argnames=("config", "inner_steps"))
def evaluate(state: MetaState, task_batch: Task, *, config: LearnerConfig,
             inner_steps: None = None) -> dict:
  """Per-task ``{"loss": (tasks,), **metrics}``.

  ``inner_steps`` is accepted for a uniform harness and ignored: any adaptation
  is part of ``predict_fn``.
  """
  check_task(task_batch, batched=True)
  return map_tasks(lambda t: task_loss(config, state.meta_params, t)[1], task_batch, config.task_strategy)
