"""Metric-based few-shot learners: Prototypical, Matching and Relation networks.

No inner loop: a task's query predictions come from comparing query embeddings
with support embeddings. All three share :func:`init`, :func:`meta_step` and
:func:`evaluate`; they differ in ``scores_fn`` (and Relation networks in the
loss). Labels must be integers in ``[0, ways)``, as the episode sampler gives.

* :func:`prototypical` — logits are negative squared Euclidean distances to the
  class means of the support embeddings (Snell et al., 2017).
* :func:`matching` — cosine-similarity attention over the support set; the
  prediction is the attention-weighted sum of one-hot support labels, and the
  logits are its log (Vinyals et al., 2016; without full-context embeddings).
* :func:`relation` — a learned relation module scores the concatenation of each
  class's summed support embedding with each query embedding; sigmoid scores are
  regressed onto one-hot targets with MSE (Sung et al., 2018).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from metajax.core import losses
from metajax.core.meta import MetaState, TaskStrategy, map_tasks, mean_task_grads, resolve_strategy
from metajax.core.tasks import Task, check_task

PyTree = Any
Array = jax.Array
ScoresFn = Callable[[PyTree, Task, int], Array]


@dataclasses.dataclass(frozen=True)
class MetricConfig:
  """Static configuration of a metric-based learner (a ``jit`` static argument).

  Attributes:
    scores_fn: ``(params, task, ways) -> (n_query, ways)`` class scores of one task.
    ways: classes per task.
    loss_fn: ``(scores, labels) -> scalar``; cross-entropy on logits by default.
    optimizer: the Optax optimizer over all parameters.
    task_strategy: how the task axis runs, see :mod:`metajax.core.meta`.
  """

  scores_fn: ScoresFn
  ways: int
  loss_fn: Callable[[Array, Array], Array] = losses.cross_entropy
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  task_strategy: TaskStrategy = "auto"

  def __post_init__(self):
    if isinstance(self.ways, bool) or not isinstance(self.ways, int) or self.ways < 2:
      raise ValueError(f"MetricConfig: ways must be an integer >= 2, got {self.ways!r}")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError("MetricConfig: optimizer must be an optax.GradientTransformation")
    resolve_strategy(self.task_strategy)


def class_means(embeddings: Array, labels: Array, ways: int) -> Array:
  """``(n, d)`` embeddings and ``(n,)`` integer labels -> ``(ways, d)`` per-class means."""
  onehot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
  return (onehot.T @ embeddings) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def prototypical(embed_fn: Callable[[PyTree, Array], Array], ways: int, **kwargs) -> MetricConfig:
  """Prototypical networks; ``embed_fn(params, x (n, ...)) -> (n, d)``."""

  def scores(params, task, ways):
    protos = class_means(embed_fn(params, task.x_support), task.y_support, ways)
    query = embed_fn(params, task.x_query)
    return -jnp.sum(jnp.square(query[:, None, :] - protos[None]), axis=-1)

  return MetricConfig(scores, ways, **kwargs)


def matching_attention(query: Array, support: Array, eps: float = 1e-8) -> Array:
  """Softmax over cosine similarities: ``(q, d), (s, d) -> (q, s)``, rows summing to one."""
  qn = query / (jnp.linalg.norm(query, axis=-1, keepdims=True) + eps)
  sn = support / (jnp.linalg.norm(support, axis=-1, keepdims=True) + eps)
  return jax.nn.softmax(qn @ sn.T, axis=-1)


def matching(embed_fn: Callable[[PyTree, Array], Array], ways: int, **kwargs) -> MetricConfig:
  """Matching networks (cosine attention); ``embed_fn(params, x (n, ...)) -> (n, d)``."""

  def scores(params, task, ways):
    attention = matching_attention(embed_fn(params, task.x_query), embed_fn(params, task.x_support))
    probs = attention @ jax.nn.one_hot(task.y_support, ways, dtype=attention.dtype)
    return jnp.log(probs + 1e-8)

  return MetricConfig(scores, ways, **kwargs)


def relation_mse(scores: Array, labels: Array) -> Array:
  """Relation-network loss: MSE between sigmoid relation scores ``(q, ways)`` and one-hot labels."""
  return losses.mse(jax.nn.sigmoid(scores), jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype))


def relation(embed_fn: Callable[[PyTree, Array], Array],
             relation_fn: Callable[[PyTree, Array], Array], ways: int, **kwargs) -> MetricConfig:
  """Relation networks.

  Parameters are ``{"embed": ..., "relation": ...}``; ``embed_fn(params["embed"],
  x)`` gives ``(n, ...)`` feature maps (or vectors), and ``relation_fn(params["relation"],
  pairs)`` maps ``(m, ...)`` pairs, concatenated on the last axis, to ``(m,)`` or
  ``(m, 1)`` scores (pre-sigmoid).
  """
  kwargs.setdefault("loss_fn", relation_mse)

  def scores(params, task, ways):
    support = embed_fn(params["embed"], task.x_support)
    query = embed_fn(params["embed"], task.x_query)
    onehot = jax.nn.one_hot(task.y_support, ways, dtype=support.dtype)
    summed = jnp.tensordot(onehot.T, support, axes=1)  # (ways, ...)
    q, feature = query.shape[0], query.shape[1:]
    pairs = jnp.concatenate([jnp.broadcast_to(summed[None], (q, ways) + feature),
                             jnp.broadcast_to(query[:, None], (q, ways) + feature)], axis=-1)
    out = relation_fn(params["relation"], pairs.reshape((q * ways,) + pairs.shape[2:]))
    return out.reshape(q, ways)

  return MetricConfig(scores, ways, **kwargs)


def init(config: MetricConfig, params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState` (``meta_params = {"params": params}``)."""
  meta_params = {"params": params}
  return MetaState(meta_params, config.optimizer.init(meta_params), jnp.zeros((), jnp.int32), key)


def task_loss(config: MetricConfig, meta_params: PyTree, task: Task) -> tuple[Array, dict]:
  """``(loss, {"loss", "accuracy"})`` of one task's query set."""
  scores = config.scores_fn(meta_params["params"], task, config.ways)
  loss = config.loss_fn(scores, task.y_query)
  return loss, {"loss": loss, "accuracy": losses.accuracy(scores, task.y_query)}


@functools.partial(jax.jit, static_argnames=("config",))
def meta_step(state: MetaState, task_batch: Task, *, config: MetricConfig) -> tuple[MetaState, dict]:
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
def evaluate(state: MetaState, task_batch: Task, *, config: MetricConfig, inner_steps: None = None) -> dict:
  """Per-task ``{"loss": (tasks,), "accuracy": (tasks,)}``; ``inner_steps`` is accepted and ignored."""
  check_task(task_batch, batched=True)
  return map_tasks(lambda t: task_loss(config, state.meta_params, t)[1], task_batch, config.task_strategy)
