"""Reptile (Nichol et al., 2018): move the initialisation toward task-adapted weights.

The outer "gradient" of a task is ``θ − φ`` where ``φ`` is ``θ`` after
``inner_steps`` of SGD on the task's support set; with ``optax.sgd(ε)`` as the
outer optimizer this is exactly ``θ ← θ + ε·mean(φ − θ)``. It shares
:class:`metajax.maml.MAMLConfig`, :func:`metajax.maml.init` and
:func:`metajax.maml.evaluate`; only the outer step differs.
"""
from __future__ import annotations

import functools

import jax
import optax

from metajax.core.meta import MetaState, mean_task_grads
from metajax.core.tasks import Task, check_task
from metajax.maml import MAMLConfig, adapt_task, query_metrics, evaluate, init

__all__ = ["MAMLConfig", "evaluate", "init", "meta_step"]


@functools.partial(jax.jit, static_argnames=("config",))
def meta_step(state: MetaState, task_batch: Task, *, config: MAMLConfig) -> tuple[MetaState, dict]:
  """One Reptile outer step on a task batch (fields ``(tasks, n, ...)``).

  Returns ``(new_state, metrics)`` with task means of ``loss`` (query loss after
  adaptation), ``support_loss`` (before) and ``metrics_fn`` entries.
  """
  if config.inner_lr_mode != "fixed" or config.multi_step_loss:
    raise ValueError("reptile: inner_lr_mode must be 'fixed' and multi_step_loss False")
  check_task(task_batch, batched=True)

  def task_grad(task):
    adapted, info = adapt_task(config, state.meta_params, task, config.inner_steps, True, False)
    adapted = jax.lax.stop_gradient(adapted)
    delta = jax.tree.map(lambda t, a: t - a, state.meta_params["params"], adapted)
    metrics = {**query_metrics(config, adapted, task), "support_loss": info.support_loss[0]}
    return {"params": delta}, metrics

  grads, metrics = mean_task_grads(task_grad, task_batch, config.task_strategy)
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.meta_params)
  meta_params = optax.apply_updates(state.meta_params, updates)
  return MetaState(meta_params, opt_state, state.step + 1, state.key), metrics
