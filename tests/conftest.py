"""Shared fixtures: a tiny MLP learner and sinusoid task batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import metajax
from metajax.data import sinusoid


def tiny_mlp(key, hidden=(8,), dtype=jnp.float32):
  """``(params, apply_fn)`` of a small 1-in 1-out MLP."""
  model = metajax.models.MLP(hidden=hidden, out=1)
  variables = model.init(key, jnp.zeros((1, 1), dtype))
  variables = jax.tree.map(lambda x: x.astype(dtype), variables)
  return metajax.models.functional(model, variables)


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)


@pytest.fixture
def mlp(key):
  return tiny_mlp(key)


@pytest.fixture
def batch(key):
  return sinusoid.sample(jax.random.fold_in(key, 1), num_tasks=4, shots=5, queries=6)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module: the suite compiles hundreds of
  programs, and none is reused across modules."""
  yield
  jax.clear_caches()
