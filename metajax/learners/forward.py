"""Learners whose whole task computation is one differentiable forward pass.

Metric-based learners (Prototypical, Matching, Relation networks), the black-box
RNN learner and the Meta-LSTM map ``(params, task)`` to query predictions in one
pass (whatever adaptation they do happens inside it) and are meta-trained by
descending the mean query loss. :func:`learner` turns such a ``predict_fn`` into
a :class:`~metajax.core.MetaLearner`; it is also the quickest way to add one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import optax

from metajax.core import losses
from metajax.core.meta import MetaState, TaskStrategy, apply_outer_update, initial_state, map_tasks
from metajax.core.meta import mean_task_grads
from metajax.core.meta import resolve_strategy
from metajax.core.protocol import MetaLearner, bind, reject_inner_steps
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
    name: the algorithm, for error messages.
  """

  predict_fn: PredictFn
  loss_fn: Callable[[Array, Array], Array] = losses.cross_entropy
  metrics_fn: Optional[Callable[[Array, Array], dict]] = accuracy_metrics
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  task_strategy: TaskStrategy = "auto"
  name: str = "learner"

  def __post_init__(self):
    if not callable(self.predict_fn):
      raise TypeError(f"{self.name}: predict_fn must be callable (params, task) -> predictions")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError(f"{self.name}: optimizer must be an optax.GradientTransformation")
    resolve_strategy(self.task_strategy)


def check_ways(ways: Any, who: str) -> int:
  """``ways`` if it is an int >= 2, else a ``ValueError`` naming ``who``."""
  if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
    raise ValueError(f"{who}: ways must be an integer >= 2, got {ways!r}")
  return ways


def init(config: LearnerConfig, params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState` (``meta_params = {"params": params}``)."""
  return initial_state(config.optimizer, {"params": params}, key)


def task_loss(config: LearnerConfig, meta_params: PyTree, task: Task) -> tuple[Array, dict]:
  """``(loss, {"loss", *metrics_fn})`` of one task's query set."""
  pred = config.predict_fn(meta_params["params"], task)
  loss = config.loss_fn(pred, task.y_query)
  metrics = {"loss": loss}
  if config.metrics_fn is not None:
    metrics.update(config.metrics_fn(pred, task.y_query))
  return loss, metrics


def meta_step(state: MetaState, task_batch: Task, *, config: LearnerConfig) -> tuple[MetaState, dict]:
  """One optimizer step on the mean query loss of a task batch (fields ``(tasks, n, ...)``);
  metrics: task-batch means of ``loss`` (= ``objective``) and ``metrics_fn``'s, and ``grad_norm``."""
  check_task(task_batch, batched=True)

  def task_grad(task):
    (loss, metrics), grads = jax.value_and_grad(task_loss, argnums=1, has_aux=True)(
        config, state.meta_params, task)
    return grads, {**metrics, "objective": loss}

  grads, metrics = mean_task_grads(task_grad, task_batch, config.task_strategy)
  return apply_outer_update(config.optimizer, state, grads, metrics)


def evaluate(state: MetaState, task_batch: Task, inner_steps: None = None, *, config: LearnerConfig) -> dict:
  """Per-task ``{"loss": (tasks,), **metrics}``; ``inner_steps`` must be ``None``."""
  reject_inner_steps(inner_steps, config.name)
  check_task(task_batch, batched=True)
  return map_tasks(lambda t: task_loss(config, state.meta_params, t)[1], task_batch, config.task_strategy)


def predict(state: MetaState, task: Task, inner_steps: None = None, *, config: LearnerConfig) -> Array:
  """``predict_fn`` of one task; ``inner_steps`` must be ``None``."""
  reject_inner_steps(inner_steps, config.name)
  check_task(task, batched=False)
  return config.predict_fn(state.meta_params["params"], task)


def learner(config: LearnerConfig) -> MetaLearner:
  """The :class:`~metajax.core.MetaLearner` of a :class:`LearnerConfig`."""
  if not isinstance(config, LearnerConfig):
    raise TypeError(f"learner: expected a LearnerConfig, got {type(config).__name__}")
  return bind(config, init, meta_step, evaluate, predict)
