"""Contract checks shared by the tests of every forward-pass learner (metajax.learner)."""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from metajax import learner


def assert_learner_contract(config: learner.LearnerConfig, params, batch, *, skip=lambda where: False,
                            rtol: float = 1e-4, atol: float = 1e-5, full: bool = True) -> None:
  """Gradients reach every parameter leaf (except ``skip(keystr)``); vmap (and, when
  ``full``, map and unroll) meta-steps equal one optimizer update on the mean of per-task
  gradients computed in a Python loop; when ``full``, jit equals no-jit."""
  state = learner.init(config, params, jax.random.PRNGKey(0))
  n = jax.tree.leaves(batch)[0].shape[0]
  task_grad = jax.jit(jax.grad(lambda mp, task: learner.task_loss(config, mp, task)[0]))
  per_task = [task_grad(state.meta_params, jax.tree.map(lambda x, i=i: x[i], batch)) for i in range(n)]
  for path, g in jax.tree_util.tree_flatten_with_path(per_task[0])[0]:
    where = jax.tree_util.keystr(path)
    if not skip(where):
      assert float(jnp.abs(g).max()) > 1e-7, f"no gradient reaches {where}"
  mean = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *per_task)
  want = jax.tree.map(lambda p, u: p + u, state.meta_params,
                      config.optimizer.update(mean, state.opt_state, state.meta_params)[0])
  for strategy in ("vmap", "map", "unroll") if full else ("vmap",):
    new, metrics = learner.meta_step(state, batch, config=dataclasses.replace(config, task_strategy=strategy))
    chex.assert_trees_all_close(new.meta_params, want, rtol=rtol, atol=atol)
  if not full:
    return
  with jax.disable_jit():
    eager, _ = learner.meta_step(state, batch, config=config)
  chex.assert_trees_all_close(eager.meta_params, learner.meta_step(state, batch, config=config)[0].meta_params,
                              rtol=rtol, atol=atol)
