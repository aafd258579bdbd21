"""The MAML family: strategies agree, jit == no-jit, determinism, training, errors."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import maml, reptile
from metajax.core import Task, mean_and_ci95
from metajax.data import sinusoid

VARIANTS = {
    "maml": lambda f: maml.MAMLConfig(f, inner_lr=0.01),
    "fomaml": lambda f: maml.fomaml(f, inner_lr=0.01),
    "meta_sgd": lambda f: maml.meta_sgd(f, inner_lr=0.01),
    "anil": lambda f: maml.anil(f, inner_lr=0.01),
    "maml++": lambda f: maml.maml_plus_plus(f, inner_lr=0.01, inner_steps=2, msl_anneal_steps=50),
}


def _close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_strategies_equal_a_python_loop_over_tasks(name, mlp, batch, key):
  params, apply_fn = mlp
  config = VARIANTS[name](apply_fn)
  state = maml.init(config, params, key)
  per_task = []
  for i in range(batch.x_support.shape[0]):
    task = jax.tree.map(lambda x: x[i], batch)
    per_task.append(jax.grad(lambda mp: maml.task_objective(config, mp, task)[0])(state.meta_params))
  want_grads = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *per_task)
  want = optax.apply_updates(state.meta_params,
                             config.optimizer.update(want_grads, state.opt_state, state.meta_params)[0])
  for strategy in ("vmap", "map", "unroll"):
    cfg = VARIANTS[name](apply_fn).__class__(**{**config.__dict__, "task_strategy": strategy})
    new, _ = maml.meta_step(state, batch, config=cfg)
    _close(new.meta_params, want)


def test_jit_equals_no_jit(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.meta_sgd(apply_fn)
  state = maml.init(config, params, key)
  jitted, m1 = maml.meta_step(state, batch, config=config)
  with jax.disable_jit():
    eager, m2 = maml.meta_step(state, batch, config=config)
  _close(jitted.meta_params, eager.meta_params)
  _close(m1, m2)


def test_same_key_same_numbers_and_different_key_different(mlp, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn)
  sample = functools.partial(sinusoid.sample, num_tasks=3, shots=4, queries=4)
  run = lambda k: maml.train_steps(maml.init(config, params, k), config=config, sample_fn=sample, num_steps=5)
  (a, ma), (b, mb), (c, _) = run(key), run(key), run(jax.random.PRNGKey(7))
  chex.assert_trees_all_equal(a, b)
  chex.assert_trees_all_equal(ma, mb)
  assert not np.allclose(a.meta_params["params"]["head"]["kernel"], c.meta_params["params"]["head"]["kernel"])


def test_train_steps_equals_repeated_meta_step(mlp, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn)
  sample = functools.partial(sinusoid.sample, num_tasks=3, shots=4, queries=4)
  state = maml.init(config, params, key)
  fused, metrics = maml.train_steps(state, config=config, sample_fn=sample, num_steps=3)
  assert metrics["loss"].shape == (3,)
  s = state
  for _ in range(3):
    k, sub = jax.random.split(s.key)
    s, _ = maml.meta_step(s._replace(key=k), sample(sub), config=config)
  _close(fused, s)


def test_meta_step_does_not_retrace_for_new_task_batches(mlp, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn)
  state = maml.init(config, params, key)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return maml.meta_step(s, b, config=config)

  for i in range(3):
    state, _ = step(state, sinusoid.sample(jax.random.PRNGKey(i), 4, 5, 5))


def test_gradients_reach_every_meta_parameter(mlp, batch, key):
  params, apply_fn = mlp
  for name in ("meta_sgd", "maml++"):
    config = VARIANTS[name](apply_fn)
    state = maml.init(config, params, key)
    grads = jax.grad(lambda mp: maml.task_objective(config, mp, jax.tree.map(lambda x: x[0], batch))[0])(
        state.meta_params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
      assert float(jnp.abs(g).sum()) > 0, f"{name}: zero gradient at {jax.tree_util.keystr(path)}"


def test_anil_adapts_only_the_head(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.anil(apply_fn)
  mask = maml.adapt_mask(config, params)
  assert mask == {"hidden_0": {"bias": False, "kernel": False}, "head": {"bias": True, "kernel": True}}
  with pytest.raises(ValueError, match="selects no parameter"):
    maml.adapt_mask(maml.anil(apply_fn, head="nope"), params)


def test_msl_weights_anneal_to_the_last_step(mlp):
  _, apply_fn = mlp
  config = maml.maml_plus_plus(apply_fn, inner_steps=4, msl_anneal_steps=10)
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(0)), [0.25] * 4)
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(10)), [0, 0, 0, 1])
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(5)).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS) + ["reptile"])
def test_every_variant_learns_to_adapt(name, key):
  from tests.conftest import tiny_mlp
  params, apply_fn = tiny_mlp(key, hidden=(40, 40))
  if name == "reptile":
    config, algo = maml.MAMLConfig(apply_fn, optimizer=optax.adam(1e-3), inner_lr=0.02, inner_steps=5), reptile
  else:
    config, algo = VARIANTS[name](apply_fn), maml
  sample = functools.partial(sinusoid.sample, num_tasks=25, shots=10, queries=10)
  state, _ = maml.train_steps(maml.init(config, params, key), config=config, sample_fn=sample,
                              num_steps=4000, step_fn=algo.meta_step)
  held_out = sinusoid.sample(jax.random.PRNGKey(123), 200, 10, 50)
  metrics = algo.evaluate(state, held_out, config=config)
  before, after = float(metrics["loss_before"].mean()), float(metrics["loss"].mean())
  assert after < 0.6 * before, f"{name}: {after=} {before=}"


def test_evaluate_returns_per_task_metrics(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn, metrics_fn=lambda p, y: {"mae": jnp.mean(jnp.abs(p - y))})
  out = maml.evaluate(maml.init(config, params, key), batch, config=config)
  assert set(out) == {"loss", "loss_before", "mae", "mae_before"}
  assert all(v.shape == (4,) for v in out.values())
  mean, half = mean_and_ci95(out["loss"])
  assert half > 0 and np.isfinite(mean)


def _bad(batch: Task, **changes) -> Task:
  return batch._replace(**changes)


@pytest.mark.parametrize("changes,match", [
    (lambda b: {"x_query": jnp.zeros(b.x_query.shape[:-1] + (2,))}, "feature shapes differ"),
    (lambda b: {"y_support": b.y_support[:, :-1]}, "y_support has"),
    (lambda b: {"y_query": b.y_query[:, :-2]}, "y_query has"),
    (lambda b: {"x_support": b.x_support[:, :0], "y_support": b.y_support[:, :0]}, "support set is empty"),
    (lambda b: {"y_query": b.y_query[..., None]}, "target shapes differ"),
    (lambda b: {"x_query": b.x_query[:2]}, "number of tasks"),
])
def test_bad_task_batches_are_named(changes, match, mlp, batch, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn)
  with pytest.raises(ValueError, match=match):
    maml.meta_step(maml.init(config, params, key), _bad(batch, **changes(batch)), config=config)


def test_single_task_where_batch_expected_is_named(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn)
  single = Task(*(x[0, :, 0] for x in batch))
  with pytest.raises(ValueError, match="single task"):
    maml.meta_step(maml.init(config, params, key), single, config=config)


@pytest.mark.parametrize("kwargs,match", [
    ({"inner_steps": 0}, "inner_steps"),
    ({"inner_steps": -2}, "inner_steps"),
    ({"inner_lr": float("nan")}, "inner_lr"),
    ({"inner_lr_mode": "learned"}, "inner_lr_mode"),
    ({"task_strategy": "pmap"}, "task strategy"),
    ({"eval_inner_steps": 0}, "eval_inner_steps"),
])
def test_bad_configs_are_named(kwargs, match, mlp):
  with pytest.raises(ValueError, match=match):
    maml.MAMLConfig(mlp[1], **kwargs)


def test_reptile_rejects_learned_rates(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.meta_sgd(apply_fn)
  with pytest.raises(ValueError, match="reptile"):
    reptile.meta_step(maml.init(config, params, key), batch, config=config)


def test_reptile_step_is_the_interpolation_toward_adapted_weights(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn, optimizer=optax.sgd(0.5), inner_steps=3, inner_lr=0.02)
  state = maml.init(config, params, key)
  new, _ = reptile.meta_step(state, batch, config=config)
  adapted = []
  for i in range(4):
    task = jax.tree.map(lambda x: x[i], batch)
    p = params
    for _ in range(3):
      g = jax.grad(lambda q: config.loss_fn(apply_fn(q, task.x_support), task.y_support))(p)
      p = jax.tree.map(lambda a, b: a - 0.02 * b, p, g)
    adapted.append(p)
  mean_adapted = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *adapted)
  want = jax.tree.map(lambda t, a: t + 0.5 * (a - t), params, mean_adapted)
  _close(new.meta_params["params"], want)


def test_meta_grad_is_the_mean_task_gradient_and_matches_finite_differences(key):
  """At float64: the loop over tasks, a central finite difference, and first != second order."""
  from tests.conftest import tiny_mlp
  with jax.enable_x64(True):
    params, apply_fn = tiny_mlp(key, dtype=jnp.float64)
    batch = jax.tree.map(lambda x: x.astype(jnp.float64), sinusoid.sample(key, num_tasks=3, shots=5, queries=6))
    tasks = [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(3)]
    configs = {order: maml.MAMLConfig(apply_fn, inner_lr=0.1, inner_steps=2, first_order=order == "first")
               for order in ("second", "first")}
    mean_objective = lambda config, p: jnp.mean(
        jnp.stack([maml.task_objective(config, {"params": p}, t)[0] for t in tasks]))
    grads = {}
    for order, config in configs.items():
      grads[order], metrics = maml.meta_grad(maml.init(config, params, key), batch, config=config)
      _close(grads[order]["params"], jax.grad(lambda p: mean_objective(config, p))(params), rtol=1e-10, atol=1e-12)
      np.testing.assert_allclose(metrics["objective"], mean_objective(config, params), rtol=1e-12)
    direction = jax.tree.map(lambda p: jax.random.normal(key, p.shape, jnp.float64), params)
    eps = 1e-6
    shifted = lambda sign: jax.tree.map(lambda p, v: p + sign * eps * v, params, direction)
    finite = (mean_objective(configs["second"], shifted(1)) - mean_objective(configs["second"], shifted(-1))) / (2 * eps)
    analytic = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads["second"]["params"]),
                                                 jax.tree.leaves(direction)))
    np.testing.assert_allclose(finite, analytic, rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(grads["second"])[0], jax.tree.leaves(grads["first"])[0])


def test_meta_step_applies_the_optimizer_to_meta_grad(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.meta_sgd(apply_fn, optimizer=optax.sgd(0.5))
  state = maml.init(config, params, key)
  grads, _ = maml.meta_grad(state, batch, config=config)
  new, _ = maml.meta_step(state, batch, config=config)
  _close(new.meta_params, jax.tree.map(lambda p, g: p - 0.5 * g, state.meta_params, grads))


@pytest.mark.parametrize("mode", ["scalar", "per_param", "per_step"])
def test_learned_inner_rates_take_the_parameters_dtype(mode, key):
  from tests.conftest import tiny_mlp
  with jax.enable_x64(True):
    params, apply_fn = tiny_mlp(key, dtype=jnp.float64)
    state = maml.init(maml.MAMLConfig(apply_fn, inner_lr_mode=mode), params, key)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.meta_params["inner_lr"])} == {jnp.dtype("float64")}
