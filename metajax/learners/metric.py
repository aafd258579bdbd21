"""Metric-based few-shot learners: Prototypical, Matching and Relation networks.

No inner loop: a task's query predictions come from comparing query embeddings
with support embeddings. Each factory returns a :class:`~metajax.core.MetaLearner`
(:func:`metajax.learners.forward.learner` over ``(n_query, ways)`` scores; keyword
arguments are :class:`~metajax.learners.forward.LearnerConfig` fields: ``optimizer``,
``task_strategy``, ``loss_fn``, ``metrics_fn``). Labels must be integers in
``[0, ways)``, as the episode sampler gives.

* :func:`prototypical` — logits are negative squared Euclidean distances to the
  class means of the support embeddings (Snell et al., 2017).
* :func:`matching` — cosine-similarity attention over the support set; the
  prediction is the attention-weighted sum of one-hot support labels, and the
  logits are its log (Vinyals et al., 2016); full-context embeddings
  (:class:`FullContextEmbedding`, bidirectional LSTM + attention LSTM) optional.
* :func:`relation` — a learned relation module scores the concatenation of each
  class's summed support embedding with each query embedding; sigmoid scores are
  regressed onto one-hot targets with MSE (Sung et al., 2018).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn

import jax
import jax.numpy as jnp

from metajax.core import losses
from metajax.core.protocol import MetaLearner
from metajax.learners.forward import LearnerConfig, check_ways, learner

__all__ = ["FullContextEmbedding", "class_means", "matching", "matching_attention", "prototypical", "relation",
           "relation_mse"]

PyTree = Any
Array = jax.Array
EmbedFn = Callable[[PyTree, Array], Array]


def class_means(embeddings: Array, labels: Array, ways: int) -> Array:
  """``(n, d)`` embeddings and ``(n,)`` integer labels -> ``(ways, d)`` per-class means; a label
  outside ``[0, ways)`` puts its row in no class."""
  onehot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
  return (onehot.T @ embeddings) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def prototypical(embed_fn: EmbedFn, ways: int, **kwargs: Any) -> MetaLearner:
  """Prototypical networks; ``embed_fn(params, x (n, ...)) -> (n, d)``.

  Support and query are embedded as one batch, as Snell et al.'s code does, so an
  embedding that normalises with its batch's statistics (BatchNorm) normalises
  prototypes and queries alike.
  """
  check_ways(ways, "prototypical")

  def scores(params, task):
    n = task.x_support.shape[0]
    embedded = embed_fn(params, jnp.concatenate([task.x_support, task.x_query]))
    # Prototypes average over all rows, the queries' labelled ``ways`` (no class): slicing the support's rows
    # instead makes XLA:CPU (jaxlib 0.10.2) fuse both slices' gradients into a YNNPACK kernel that segfaults
    # at 60-way 5-shot 5-query (benchmarks/RESULTS.md).
    labels = jnp.concatenate([task.y_support, jnp.full(task.x_query.shape[0], ways, task.y_support.dtype)])
    protos, query = class_means(embedded, labels, ways), embedded[n:]
    return -jnp.sum(jnp.square(query[:, None, :] - protos[None]), axis=-1)

  return learner(LearnerConfig(scores, name="prototypical", **kwargs))


def matching_attention(query: Array, support: Array, eps: float = 1e-8, normalize_query: bool = True) -> Array:
  """Softmax over cosine similarities: ``(q, d), (s, d) -> (q, s)``, rows summing to one.

  ``normalize_query=False`` normalises the support embeddings only (as common Matching
  network implementations do): each query's similarities then scale with its norm, a
  learned temperature; the ranking of the support set is unchanged.
  """
  if normalize_query:
    query = query / (jnp.linalg.norm(query, axis=-1, keepdims=True) + eps)
  sn = support / (jnp.linalg.norm(support, axis=-1, keepdims=True) + eps)
  return jax.nn.softmax(query @ sn.T, axis=-1)


class FullContextEmbedding(nn.Module):
  """Matching networks' full-context embeddings (Vinyals et al. 2016, appendix A).

  ``(support (s, d), query (q, d)) -> (support' (s, d), query' (q, d))``: the
  support embeddings pass through a bidirectional LSTM (outputs summed, plus a
  skip connection); each query embedding is refined by an LSTM that reads the
  support ``steps`` times with attention.

  Attributes:
    steps: attention read steps over the support set.
  """

  steps: int = 5

  @nn.compact
  def __call__(self, support: Array, query: Array) -> tuple[Array, Array]:
    d = support.shape[-1]
    cell = lambda: nn.LSTMCell(d, param_dtype=support.dtype)  # its carry takes param_dtype (float64 under x64)
    bi = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()), merge_fn=lambda a, b: a + b)
    g = support + bi(support[None])[0]
    cell = nn.LSTMCell(d, name="attention_lstm")
    carry = (jnp.zeros_like(query), jnp.zeros_like(query))
    h = query
    for _ in range(self.steps):
      read = jax.nn.softmax(h @ g.T, axis=-1) @ g
      carry, out = cell(carry, jnp.concatenate([query, read], axis=-1))
      h = out + query
    return g, h


def matching(embed_fn: EmbedFn, ways: int, fce_fn: Optional[Callable[[PyTree, Array, Array], tuple]] = None,
             normalize_query: bool = True, **kwargs: Any) -> MetaLearner:
  """Matching networks: cosine attention over the support set.

  ``embed_fn(params, x (n, ...)) -> (n, d)``. With ``fce_fn`` (full-context
  embeddings, e.g. ``functional``-wrapped :class:`FullContextEmbedding` called as
  ``fce_fn(params, support, query)``) the parameters are ``{"embed": ...,
  "fce": ...}`` and the embeddings are refined before the attention.
  ``normalize_query``: see :func:`matching_attention`.
  """
  check_ways(ways, "matching")

  def scores(params, task):
    embed_params = params if fce_fn is None else params["embed"]
    support = embed_fn(embed_params, task.x_support)
    query = embed_fn(embed_params, task.x_query)
    if fce_fn is not None:
      support, query = fce_fn(params["fce"], support, query)
    attention = matching_attention(query, support, normalize_query=normalize_query)
    probs = attention @ jax.nn.one_hot(task.y_support, ways, dtype=attention.dtype)
    return jnp.log(probs + 1e-8)

  return learner(LearnerConfig(scores, name="matching", **kwargs))


def relation_mse(scores: Array, labels: Array) -> Array:
  """Relation-network loss: MSE between sigmoid relation scores ``(q, ways)`` and one-hot labels."""
  return losses.mse(jax.nn.sigmoid(scores), jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype))


def relation(embed_fn: EmbedFn,
             relation_fn: EmbedFn, ways: int, **kwargs: Any) -> MetaLearner:
  """Relation networks.

  Parameters are ``{"embed": ..., "relation": ...}``; ``embed_fn(params["embed"],
  x)`` gives ``(n, ...)`` feature maps (or vectors), and ``relation_fn(params["relation"],
  pairs)`` maps ``(m, ...)`` pairs, concatenated on the last axis, to ``(m,)`` or
  ``(m, 1)`` scores (pre-sigmoid).
  """
  check_ways(ways, "relation")
  kwargs.setdefault("loss_fn", relation_mse)

  def scores(params, task):
    support = embed_fn(params["embed"], task.x_support)
    query = embed_fn(params["embed"], task.x_query)
    onehot = jax.nn.one_hot(task.y_support, ways, dtype=support.dtype)
    summed = jnp.tensordot(onehot.T, support, axes=1)  # (ways, ...)
    q, feature = query.shape[0], query.shape[1:]
    pairs = jnp.concatenate([jnp.broadcast_to(summed[None], (q, ways) + feature),
                             jnp.broadcast_to(query[:, None], (q, ways) + feature)], axis=-1)
    out = relation_fn(params["relation"], pairs.reshape((q * ways,) + pairs.shape[2:]))
    return out.reshape(q, ways)

  return learner(LearnerConfig(scores, name="relation", **kwargs))
