"""The learned LSTM optimizer: Optax protocol, meta-training, and use inside MAML."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import learned_optimizer as lo
from metajax import maml
from metajax.core import losses
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


def test_meta_gradients_reach_every_net_parameter(key):
  config = _config(optimizer=optax.sgd(1.0))
  state = lo.init(config, NET.init_params(key), key)
  new, metrics = lo.meta_step(state, quadratic.sample(key, 4), config=config)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.meta_params, state.meta_params)
  for path, delta in jax.tree_util.tree_flatten_with_path(moved)[0]:
    assert delta > 0, f"no meta-gradient reaches {jax.tree_util.keystr(path)}"
  assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1


def test_meta_step_is_deterministic_and_jit_equals_eager(key):
  config = _config(horizon=4, truncation=2)
  state = lo.init(config, NET.init_params(key), key)
  batch = quadratic.sample(key, 3)
  a, _ = lo.meta_step(state, batch, config=config)
  b, _ = lo.meta_step(state, batch, config=config)
  chex.assert_trees_all_equal(a, b)
  with jax.disable_jit():
    eager, _ = lo.meta_step(state, batch, config=config)
  chex.assert_trees_all_close(a.meta_params, eager.meta_params, rtol=1e-5, atol=1e-6)


def test_after_short_meta_training_it_beats_tuned_sgd_on_held_out_quadratics(key):
  config = _config(horizon=100, truncation=20, optimizer=optax.adam(3e-3))
  state = lo.init(config, NET.init_params(key), key)
  state, _ = maml.train_steps(state, config=config, sample_fn=functools.partial(quadratic.sample, num_tasks=16),
                              num_steps=100, step_fn=lo.meta_step)
  held_out = quadratic.sample(jax.random.PRNGKey(99), 64)
  learned = float(lo.evaluate(state, held_out, config=config)["loss"].mean())
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
