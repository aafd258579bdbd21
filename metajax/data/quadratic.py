"""Random quadratic problems (Andrychowicz et al. 2016, §3.1): ``f(θ) = mean((Wθ − y)²)``
with ``W ~ N(0, 1)^{d×d}`` and ``y ~ N(0, 1)^d``, as tasks for a linear optimizee."""
from __future__ import annotations

import jax

from metajax.core.tasks import Task


def sample(key: jax.Array, num_tasks: int, dim: int = 10) -> Task:
  """``num_tasks`` problems; a problem's rows of ``W`` are its inputs ``(dim, dim)`` and
  ``y`` its targets ``(dim,)``; the query set is the support set (pure optimisation)."""
  k_w, k_y = jax.random.split(key)
  w = jax.random.normal(k_w, (num_tasks, dim, dim))
  y = jax.random.normal(k_y, (num_tasks, dim))
  return Task(w, y, w, y)


def apply(theta: jax.Array, x: jax.Array) -> jax.Array:
  """The linear optimizee: ``θ (dim,), x (n, dim) -> (n,)``."""
  return x @ theta
