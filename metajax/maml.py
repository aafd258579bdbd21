"""MAML for research code: the documented entry points, jitted, over a :class:`MAMLConfig`.

Usage::

    import jax, optax, metajax
    from metajax import maml
    model = metajax.models.MLP()
    params, apply_fn = metajax.models.functional(model, model.init(key, x0))
    config = maml.MAMLConfig(apply_fn, optimizer=optax.adam(1e-3), inner_lr=0.01)
    state = maml.init(config, params, key)
    state, metrics = maml.meta_step(state, task_batch, config=config)   # jitted
    grads, metrics = maml.meta_grad(state, task_batch, config=config)   # the meta-gradient only

Variants are :class:`MAMLConfig` settings: ``first_order=True`` (FOMAML),
``inner_lr_mode="per_param"`` (Meta-SGD), ``adapt_filter=lambda path:
path.startswith("head")`` (ANIL), ``inner_lr_mode="per_step", multi_step_loss=True``
(MAML++). The implementation, and every other learner behind the one
:class:`~metajax.core.MetaLearner` protocol, is in :mod:`metajax.learners`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
from jax.sharding import Mesh

from metajax.core.loop import scan_steps
from metajax.core.meta import MetaState
from metajax.core.tasks import Task
from metajax.learners import gradient
from metajax.learners.gradient import MAMLConfig
from metajax.learners.gradient import msl_weights
from metajax.learners.gradient import task_objective

__all__ = ["MAMLConfig", "adapt_params", "evaluate", "init", "meta_grad", "meta_step", "msl_weights",
           "task_objective", "train_steps"]

init = gradient.init
meta_grad = jax.jit(gradient.meta_grad, static_argnames=("config",))
meta_step = jax.jit(gradient.meta_step, static_argnames=("config",))
evaluate = jax.jit(gradient.evaluate, static_argnames=("config", "inner_steps"))
adapt_params = jax.jit(gradient.adapt_params, static_argnames=("config", "inner_steps"))


@functools.partial(jax.jit, static_argnames=("config", "sample_fn", "num_steps", "mesh"))
def train_steps(state: MetaState, data: Optional[Any] = None, *, config: MAMLConfig,
                sample_fn: Callable[..., Task], num_steps: int, mesh: Optional[Mesh] = None) -> tuple[MetaState, dict]:
  """``num_steps`` MAML outer steps in one compiled call, task batches drawn on device
  (see :func:`metajax.core.scan_steps`); metrics stacked to ``(num_steps,)``."""
  return scan_steps(state, data, functools.partial(gradient.meta_step, config=config), sample_fn, num_steps, mesh)
