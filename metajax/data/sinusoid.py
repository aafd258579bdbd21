"""Sinusoid regression tasks (Finn et al., 2017, §5.1), sampled on device.

A task is ``y = A·sin(x − φ)`` with amplitude ``A ~ U[0.1, 5]``, phase
``φ ~ U[0, π]`` and inputs ``x ~ U[−5, 5]``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metajax.core.tasks import Task
from metajax.core.validate import check_positive_int

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, jnp.pi)
X_RANGE = (-5.0, 5.0)


class SinusoidParams(NamedTuple):
  """Per-task amplitude and phase, each ``(tasks,)``."""

  amplitude: jax.Array
  phase: jax.Array


def sample_params(key: jax.Array, num_tasks: int) -> SinusoidParams:
  """Draws ``num_tasks`` (amplitude, phase) pairs."""
  k_amp, k_phase = jax.random.split(key)
  amplitude = jax.random.uniform(k_amp, (num_tasks,), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
  phase = jax.random.uniform(k_phase, (num_tasks,), minval=PHASE[0], maxval=PHASE[1])
  return SinusoidParams(amplitude, phase)


def evaluate(params: SinusoidParams, x: jax.Array) -> jax.Array:
  """True function values: ``x (tasks, n, 1) -> (tasks, n, 1)``."""
  return params.amplitude[:, None, None] * jnp.sin(x - params.phase[:, None, None])


def sample(key: jax.Array, num_tasks: int, shots: int, queries: int) -> Task:
  """A batch of sinusoid tasks.

  Args:
    key: PRNG key.
    num_tasks: size of the task axis.
    shots: support points per task.
    queries: query points per task.

  Returns:
    A :class:`Task` batch with ``x_* (num_tasks, n, 1)`` and ``y_* (num_tasks, n, 1)``.
  """
  for name, value in (("num_tasks", num_tasks), ("shots", shots), ("queries", queries)):
    check_positive_int(value, f"sinusoid.sample: {name}")
  k_params, k_x = jax.random.split(key)
  params = sample_params(k_params, num_tasks)
  x = jax.random.uniform(k_x, (num_tasks, shots + queries, 1), minval=X_RANGE[0], maxval=X_RANGE[1])
  y = evaluate(params, x)
  return Task(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
