"""Losses and metrics over a set of predictions: ``(pred, target) -> scalar``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def mse(pred: Array, target: Array) -> Array:
  """Mean squared error; ``pred`` and ``target`` have the same shape."""
  return jnp.mean(jnp.square(pred - target))


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy; ``logits (n, classes)``, integer ``labels (n,)``."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of ``argmax(logits, -1) == labels``; ``logits (n, classes)``, ``labels (n,)``."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
