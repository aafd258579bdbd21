"""The gradient-based family beyond the conformance suite: meta-gradients against the per-task
loop and finite differences, Reptile's interpolation, MAML++ weights, ANIL's mask, errors."""
from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import learners, maml
from metajax.core import Task, mean_and_ci95, train_steps
from metajax.core.tree import mask_from_filter
from metajax.data import sinusoid
from metajax.learners import gradient

VARIANTS = {  # MAMLConfig settings of each variant
    "maml": {},
    "fomaml": {"first_order": True},
    "meta_sgd": {"inner_lr_mode": "per_param"},
    "anil": {"adapt_filter": lambda path: path.split("/")[0] == "head"},
    "maml++": {"inner_lr_mode": "per_step", "multi_step_loss": True, "inner_steps": 2, "msl_anneal_steps": 50},
}


def _config(name, apply_fn, **kwargs):
  return maml.MAMLConfig(apply_fn, inner_lr=0.01, **{**VARIANTS[name], **kwargs})


def _close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


SLOW = pytest.mark.slow  # the conformance suite runs every variant's strategies and learning curve by default


@pytest.mark.parametrize("name", [n if n in ("maml", "maml++") else pytest.param(n, marks=SLOW) for n in VARIANTS])
def test_strategies_equal_a_python_loop_over_tasks(name, mlp, batch, key):
  params, apply_fn = mlp
  config = _config(name, apply_fn)
  state = maml.init(config, params, key)
  per_task = []
  for i in range(batch.x_support.shape[0]):
    task = jax.tree.map(lambda x: x[i], batch)
    per_task.append(jax.grad(lambda mp: maml.task_objective(config, mp, task)[0])(state.meta_params))
  want_grads = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *per_task)
  want = optax.apply_updates(state.meta_params,
                             config.optimizer.update(want_grads, state.opt_state, state.meta_params)[0])
  for strategy in ("vmap", "map", "unroll"):
    new, _ = maml.meta_step(state, batch, config=dataclasses.replace(config, task_strategy=strategy))
    _close(new.meta_params, want)


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


def test_anil_adapts_only_the_head(mlp, batch, key):
  params, apply_fn = mlp
  mask = mask_from_filter(VARIANTS["anil"]["adapt_filter"], params)
  assert mask == {"hidden_0": {"bias": False, "kernel": False}, "head": {"bias": True, "kernel": True}}
  with pytest.raises(ValueError, match="selects no parameter"):
    learners.anil(apply_fn, head="nope").meta_step(maml.init(_config("maml", apply_fn), params, key), batch)
  state = maml.init(_config("anil", apply_fn), params, key)
  adapted = maml.adapt_params(_config("anil", apply_fn), state, jax.tree.map(lambda x: x[0], batch))
  chex.assert_trees_all_equal(adapted["hidden_0"], params["hidden_0"])
  assert not np.allclose(adapted["head"]["kernel"], params["head"]["kernel"])


def test_msl_weights_anneal_to_the_last_step(mlp):
  _, apply_fn = mlp
  config = _config("maml++", apply_fn, inner_steps=4, msl_anneal_steps=10)
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(0)), [0.25] * 4)
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(10)), [0, 0, 0, 1])
  np.testing.assert_allclose(maml.msl_weights(config, jnp.array(5)).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", [n if n in ("maml", "reptile") else pytest.param(n, marks=SLOW)
                                  for n in list(VARIANTS) + ["reptile"]])
def test_every_variant_learns_to_adapt(name, key):
  from tests.conftest import tiny_mlp
  params, apply_fn = tiny_mlp(key, hidden=(40, 40))
  if name == "reptile":
    learner = learners.reptile(apply_fn, optimizer=optax.adam(1e-3), inner_lr=0.02, inner_steps=5)
  else:
    learner = gradient.learner(_config(name, apply_fn))
  sample = functools.partial(sinusoid.sample, num_tasks=25, shots=10, queries=10)
  state, _ = train_steps(learner.init(key, params), meta_step=learner.meta_step, sample_fn=sample, num_steps=4000)
  held_out = sinusoid.sample(jax.random.PRNGKey(123), 200, 10, 50)
  metrics = jax.jit(learner.evaluate)(state, held_out)
  before, after = float(metrics["loss_before"].mean()), float(metrics["loss"].mean())
  assert after < 0.6 * before, f"{name}: {after=} {before=}"


def test_evaluate_returns_per_task_metrics(mlp, batch, key):
  params, apply_fn = mlp
  config = maml.MAMLConfig(apply_fn, metrics_fn=lambda p, y: {"mae": jnp.mean(jnp.abs(p - y))})
  out = maml.evaluate(maml.init(config, params, key), batch, config=config)
  assert set(out) == {"loss", "loss_before", "mae", "mae_before", "support_loss"}
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


def test_reptile_step_is_the_interpolation_toward_adapted_weights(mlp, batch, key):
  params, apply_fn = mlp
  config = learners.ReptileConfig(apply_fn, optimizer=optax.sgd(0.5), inner_steps=3, inner_lr=0.02)
  state = gradient.init(config, params, key)
  new, metrics = jax.jit(gradient.reptile_step, static_argnames="config")(state, batch, config=config)
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
  half_squared = [0.5 * sum(jnp.sum(jnp.square(t - a)) for t, a in zip(jax.tree.leaves(params), jax.tree.leaves(p)))
                  for p in adapted]
  np.testing.assert_allclose(metrics["objective"], np.mean(half_squared), rtol=1e-5)


def test_reptile_with_its_papers_inner_adam_mini_batches_and_meta_step_one(mlp, batch, key):
  """Nichol et al.'s Omniglot protocol: inner Adam (β1 0, new per task) on mini-batches of the
  support, outer SGD with step 1 (the new initialisation is the tasks' mean adapted weights)."""
  params, apply_fn = mlp
  config = learners.ReptileConfig(apply_fn, optimizer=optax.sgd(1.0), inner_steps=3,
                                  inner_optimizer=optax.adam(0.01, b1=0.0), inner_batch_size=2)
  new, _ = jax.jit(gradient.reptile_step, static_argnames="config")(gradient.init(config, params, key), batch,
                                                                    config=config)
  adapted = []
  for i in range(4):
    task = jax.tree.map(lambda x: x[i], batch)
    p, m = params, jax.tree.map(jnp.zeros_like, params)
    for t, rows in enumerate(([0, 1], [2, 3], [4, 0]), start=1):   # 5 regression targets, in order, cycling
      rows = jnp.array(rows)
      g = jax.grad(lambda q: config.loss_fn(apply_fn(q, task.x_support[rows]), task.y_support[rows]))(p)
      m = jax.tree.map(lambda v, gg: 0.999 * v + 0.001 * gg ** 2, m, g)
      p = jax.tree.map(lambda a, gg, v: a - 0.01 * gg / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8), p, g, m)
    adapted.append(p)
  _close(new.meta_params["params"], jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *adapted))


def test_reptile_carries_its_inner_adam_state_across_tasks_and_steps(mlp, batch, key):
  """``carry_inner_state``: every task starts from the carried Adam moments, which become the
  task-batch mean of the final ones; the outer optimizer never sees them; evaluation uses them."""
  params, apply_fn = mlp
  inner = optax.adam(0.01, b1=0.0)
  config = learners.ReptileConfig(apply_fn, optimizer=optax.adam(1e-3), inner_steps=2, inner_optimizer=inner,
                                  carry_inner_state=True)
  state = gradient.init(config, params, key)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(optax.adam(1e-3).init({"params": params}))
  step = jax.jit(gradient.reptile_step, static_argnames="config")
  carried = state.meta_params["inner_state"]
  for _ in range(2):
    finals, adapted = [], []
    for i in range(4):
      task = jax.tree.map(lambda x: x[i], batch)
      p, s = state.meta_params["params"], carried
      for _ in range(2):
        g = jax.grad(lambda q: config.loss_fn(apply_fn(q, task.x_support), task.y_support))(p)
        u, s = inner.update(g, s, p)
        p = optax.apply_updates(p, u)
      finals.append(s)
      adapted.append(p)
    carried = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0).astype(a[0].dtype), *finals)
    before = state
    state, metrics = step(state, batch, config=config)
    assert "inner_state" not in metrics
    _close(state.meta_params["inner_state"], carried)
    assert int(state.meta_params["inner_state"][0].count) == int(before.meta_params["inner_state"][0].count) + 2
  fresh = dataclasses.replace(config, carry_inner_state=False)
  scores = [gradient.evaluate(s, batch, config=c)["loss"] for s, c in (
      (state, config), (state._replace(meta_params={"params": state.meta_params["params"]}), fresh))]
  assert not np.allclose(scores[0], scores[1], rtol=1e-4)   # evaluation adapts from the carried moments
  with pytest.raises(ValueError, match="carry_inner_state carries an inner_optimizer's state; none was given"):
    learners.ReptileConfig(apply_fn, carry_inner_state=True)


def test_reptile_sequential_carry_runs_the_tasks_in_turn_through_one_inner_adam(mlp, batch, key):
  """``carry_mode="sequential"``: each task adapts from the Adam state the previous one left (the
  paper's code), against a Python loop over the tasks; the mean mode differs."""
  params, apply_fn = mlp
  inner = optax.adam(0.01, b1=0.0)
  config = learners.ReptileConfig(apply_fn, optimizer=optax.sgd(1.0), inner_steps=2, inner_optimizer=inner,
                                  carry_inner_state=True, carry_mode="sequential")
  state = gradient.init(config, params, key)
  theta, s = state.meta_params["params"], state.meta_params["inner_state"]
  deltas = []
  for i in range(4):
    task, p = jax.tree.map(lambda x: x[i], batch), theta
    for _ in range(2):
      g = jax.grad(lambda q: config.loss_fn(apply_fn(q, task.x_support), task.y_support))(p)
      u, s = inner.update(g, s, p)
      p = optax.apply_updates(p, u)
    deltas.append(jax.tree.map(jnp.subtract, theta, p))
  grads, metrics = jax.jit(gradient.reptile_grad, static_argnames="config")(state, batch, config=config)
  _close(grads["params"], jax.tree.map(lambda *d: jnp.mean(jnp.stack(d), 0), *deltas))
  _close(metrics["inner_state"], s)
  assert int(metrics["inner_state"][0].count) == 8  # 4 tasks x 2 steps through one Adam
  new, _ = jax.jit(gradient.reptile_step, static_argnames="config")(state, batch, config=config)
  _close(new.meta_params["inner_state"], s)
  mean_grads, _ = gradient.reptile_grad(state, batch, config=dataclasses.replace(config, carry_mode="mean"))
  assert not np.allclose(mean_grads["params"]["head"]["kernel"], grads["params"]["head"]["kernel"], rtol=1e-4)
  with pytest.raises(ValueError, match="carry_mode 'sequential' says how tasks share a carried inner state; "
                                       "set carry_inner_state=True"):
    learners.ReptileConfig(apply_fn, inner_optimizer=inner, carry_mode="sequential")
  with pytest.raises(ValueError, match="unknown carry_mode 'serial'"):
    learners.ReptileConfig(apply_fn, inner_optimizer=inner, carry_inner_state=True, carry_mode="serial")


def test_evaluation_adapts_on_its_own_mini_batches(mlp, batch, key):
  params, apply_fn = mlp
  scores = {}
  for train_size, eval_size in ((None, None), (2, None), (None, 5), (None, 2)):
    config = learners.MAMLConfig(apply_fn, inner_steps=2, inner_lr=0.1, inner_batch_size=train_size,
                                 eval_inner_batch_size=eval_size)
    scores[train_size, eval_size] = gradient.evaluate(gradient.init(config, params, key), batch, config=config)["loss"]
  np.testing.assert_allclose(scores[2, None], scores[None, None], rtol=1e-6)   # training batches are not evaluation's
  np.testing.assert_allclose(scores[None, 5], scores[None, None], rtol=1e-5)   # the whole support, interleaved
  assert not np.allclose(scores[None, 2], scores[None, None], rtol=1e-3)


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
  config = _config("meta_sgd", apply_fn, optimizer=optax.sgd(0.5))
  state = maml.init(config, params, key)
  grads, _ = maml.meta_grad(state, batch, config=config)
  new, _ = maml.meta_step(state, batch, config=config)
  _close(new.meta_params, jax.tree.map(lambda p, g: p - 0.5 * g, state.meta_params, grads))


def test_grad_norm_is_the_meta_gradients_norm_before_clipping(mlp, batch, key):
  params, apply_fn = mlp
  clipped = _config("maml", apply_fn, optimizer=optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0)))
  state = maml.init(clipped, params, key)
  grads, _ = maml.meta_grad(state, batch, config=clipped)
  norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))))
  new, metrics = maml.meta_step(state, batch, config=clipped)
  assert norm > 1e-2
  np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
  moved = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(new.meta_params),
                                                              jax.tree.leaves(state.meta_params))))
  np.testing.assert_allclose(moved, 1e-3, rtol=1e-4)  # the optimizer clipped what the metric reports


@pytest.mark.parametrize("mode", ["scalar", "per_param", "per_step"])
def test_learned_inner_rates_take_the_parameters_dtype(mode, key):
  from tests.conftest import tiny_mlp
  with jax.enable_x64(True):
    params, apply_fn = tiny_mlp(key, dtype=jnp.float64)
    state = maml.init(maml.MAMLConfig(apply_fn, inner_lr_mode=mode), params, key)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.meta_params["inner_lr"])} == {jnp.dtype("float64")}


def test_derivative_order_annealing_is_first_order_before_the_switch_and_second_after(mlp, batch, key):
  params, apply_fn = mlp
  anneal = maml.MAMLConfig(apply_fn, inner_steps=2, first_order_until=3)
  second = maml.MAMLConfig(apply_fn, inner_steps=2)
  first = maml.MAMLConfig(apply_fn, inner_steps=2, first_order=True)
  state = maml.init(anneal, params, key)
  grad = lambda config, s: maml.meta_grad(s, batch, config=config)[0]
  chex.assert_trees_all_close(grad(anneal, state), grad(first, state), rtol=1e-5, atol=1e-7)
  later = state._replace(step=state.step + 3)
  chex.assert_trees_all_close(grad(anneal, later), grad(second, later), rtol=1e-5, atol=1e-7)
  differ = jax.tree.map(lambda a, b: np.abs(a - b).max(), grad(first, later), grad(second, later))
  assert max(jax.tree.leaves(differ)) > 1e-4
  with pytest.raises(ValueError, match="first_order_until anneals to second order"):
    maml.MAMLConfig(apply_fn, first_order=True, first_order_until=3)
