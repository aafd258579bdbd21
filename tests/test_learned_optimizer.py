"""The learned LSTM optimizer: Optax protocol, meta-training, and use inside MAML."""
from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import maml
from metajax.core import losses, train_steps
from metajax.learners import learned_opt as lo
from metajax.data import quadratic
from tests.conftest import tiny_mlp

NET = lo.LSTMOptimizerNet(hidden=8)


def _config(**kwargs):
  kwargs = {"horizon": 20, "truncation": 5, **kwargs}
  return lo.LearnedOptimizerConfig(NET, quadratic.apply, lambda k: jax.random.normal(k, (10,)), **kwargs)


def test_the_transformation_follows_the_optax_protocol(key):
  transform = lo.lstm_optimizer(NET, NET.init_params(key))
  chained = optax.chain(optax.clip_by_global_norm(1.0), transform)
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}
  state = chained.init(params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  updates, new_state = jax.jit(chained.update)(grads, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_structs(new_state, state)
  eager, _ = chained.update(grads, state, params)
  chex.assert_trees_all_close(updates, eager, rtol=1e-6)
  assert float(jnp.abs(jax.tree.leaves(updates)[0]).max()) > 0
  # coordinate-wise: equal gradients get equal updates, whatever the leaf
  flat = jnp.concatenate([u.ravel() for u in jax.tree.leaves(updates)])
  np.testing.assert_allclose(flat, flat[0], rtol=1e-6)


def test_meta_step_continues_each_problem_across_truncations(key):
  """horizon 4 in two truncations of 2 ends where one unroll of 4 ends (same starts, same net)."""
  config = _config(horizon=4, truncation=2, optimizer=optax.sgd(0.0))
  state = lo.init(config, NET.init_params(key), key)
  batch = quadratic.sample(key, 3)
  _, metrics = jax.jit(lo.meta_step, static_argnames="config")(state, batch, config=config)
  starts, opt_state = lo._starts(config, jax.random.fold_in(key, 1), 3)
  finals = jax.vmap(lambda t, p, s: lo._run(config, state.meta_params["params"], t, p, s, 4)[1][0])(
      batch, starts, opt_state)
  support = jax.vmap(lambda p, t: losses.mse(quadratic.apply(p, t.x_support), t.y_support))(finals, batch)
  np.testing.assert_allclose(metrics["support_loss_after"], support.mean(), rtol=1e-5)


def test_after_short_meta_training_it_beats_tuned_sgd_on_held_out_quadratics(key):
  config = _config(horizon=100, truncation=20, optimizer=optax.adam(3e-3))
  learner = lo.learned_optimizer(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
  state = learner.init(key, NET.init_params(key))
  state, _ = train_steps(state, meta_step=learner.meta_step,
                         sample_fn=functools.partial(quadratic.sample, num_tasks=16), num_steps=100)
  held_out = quadratic.sample(jax.random.PRNGKey(99), 64)
  learned = float(jax.jit(learner.evaluate)(state, held_out)["support_loss_after"].mean())
  starts = jax.vmap(config.init_fn)(jax.random.split(jax.random.PRNGKey(0), 64))  # evaluate's default starts

  def final_loss(opt):
    run = lambda p, t: lo.optimize(opt, p, lambda q: losses.mse(quadratic.apply(q, t.x_support), t.y_support),
                                   100)[1][-1]
    return float(jnp.nan_to_num(jax.vmap(run)(starts, held_out), nan=jnp.inf).mean())

  best_sgd = min(final_loss(optax.sgd(lr)) for lr in (0.01, 0.03, 0.1, 0.2))
  assert learned < best_sgd, f"{learned=} {best_sgd=}"


def test_it_serves_as_maml_inner_and_outer_optimizer(mlp, batch, key):
  params, apply_fn = mlp
  transform = lo.lstm_optimizer(NET, NET.init_params(key))
  for kwargs in ({"inner_optimizer": transform}, {"optimizer": transform}):
    config = maml.MAMLConfig(apply_fn, inner_steps=2, **kwargs)
    state = maml.init(config, params, key)
    new, metrics = maml.meta_step(state, batch, config=config)
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(jax.tree.leaves(new.meta_params)[0], jax.tree.leaves(state.meta_params)[0])
  inner = maml.MAMLConfig(apply_fn, inner_steps=2, inner_optimizer=transform)
  task = jax.tree.map(lambda x: x[0], batch)
  adapted = maml.adapt_params(inner, maml.init(inner, params, key), task, 2)
  want, _ = lo.optimize(transform, params, lambda p: losses.mse(apply_fn(p, task.x_support), task.y_support), 2)
  chex.assert_trees_all_close(adapted, want, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_named(key):
  with pytest.raises(ValueError, match="must divide horizon"):
    _config(horizon=10, truncation=3)
  with pytest.raises(ValueError, match="inner_lr_mode='fixed'"):
    maml.MAMLConfig(tiny_mlp(key)[1], inner_lr_mode="scalar",
                    inner_optimizer=lo.lstm_optimizer(NET, NET.init_params(key)))
