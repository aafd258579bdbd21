"""MAML++'s per-step BatchNorm (Antoniou et al. 2019): per-step weights and biases, and
per-step running statistics, on a small Conv4."""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax.core import Task, losses
from metajax.core.adapt import adapt
from metajax.learners import REGISTRY, RunningStats, Setup, gradient, is_batch_norm
from metajax.models import MLP, Conv4, functional, functional_with_stats

WAYS, SHOTS, STEPS, SIZE = 3, 2, 2, 16


def _tasks(key, n=2):
  k_s, k_q = jax.random.split(key)
  y = jnp.tile(jnp.arange(WAYS).repeat(SHOTS), (n, 1))
  return Task(jax.random.normal(k_s, (n, WAYS * SHOTS, SIZE, SIZE, 1)), y,
              jax.random.normal(k_q, (n, WAYS * SHOTS, SIZE, SIZE, 1)), y)


def _config(apply_fn, **kw):
  return gradient.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, inner_steps=STEPS, inner_lr=0.1,
                             optimizer=optax.sgd(0.1), task_strategy="vmap", **kw)


def _variables(dtype=jnp.float32):
  model = Conv4(num_classes=WAYS, width=4)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 1)))
  return model, jax.tree.map(lambda a: a.astype(dtype), variables)


def test_adapt_gives_each_step_its_own_copy_of_per_step_leaves():
  params = {"w": jnp.ones(2), "g": jnp.arange(4.0)[:, None] * jnp.ones((4, 2))}
  loss = lambda p, s: (jnp.sum((p["w"] * p["g"] - s) ** 2), p["g"][0])
  out, info = adapt(params, jnp.zeros(2), loss, steps=2, lr=0.1, per_step={"w": False, "g": True}, has_aux=True,
                    trace_fn=lambda p: p["g"][0])
  np.testing.assert_array_equal(info.aux, [0.0, 1.0])  # step t's loss sees copy t
  np.testing.assert_array_equal(info.trace, [0.0, 1.0])  # and so does the trace after its update
  np.testing.assert_array_equal(out["g"], [1.0, 1.0])  # the result: copy steps - 1
  long, _ = adapt(params, jnp.zeros(2), lambda p, s: jnp.sum(p["w"] ** 2), steps=6, lr=0.1,
                  per_step={"w": False, "g": True})
  np.testing.assert_array_equal(long["g"], [3.0, 3.0])  # beyond the copies: the last one
  with pytest.raises(ValueError, match="per_step"):
    adapt(params, jnp.zeros(2), loss, steps=1, lr=0.1, per_step={"w": False, "g": True},
          mask={"w": True, "g": True})


def test_per_step_batch_norm_weights_are_the_shared_ones_split_by_step():
  """At float64: with the copies tied (as at init), the objective equals MAML's with one shared
  BatchNorm scale and bias that does not adapt, and the copies' gradients sum to the shared
  one's (chain rule); each copy gets a gradient of its own."""
  with jax.enable_x64(True):
    model, variables = _variables(jnp.float64)
    params, apply_fn = functional(model, variables)
    task = jax.tree.map(lambda a: a[0].astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a[0],
                        _tasks(jax.random.PRNGKey(1)))
    shared = _config(apply_fn, adapt_filter=lambda path: not is_batch_norm(path))
    per_step = _config(apply_fn, per_step_filter=is_batch_norm)
    grad = jax.jit(jax.grad(gradient.task_objective, argnums=1, has_aux=True), static_argnums=0)
    meta = gradient.init(per_step, params, jax.random.PRNGKey(0)).meta_params
    assert meta["params"]["norm_0"]["scale"].shape == (STEPS, 4)
    assert meta["params"]["conv_0"]["kernel"].shape == params["conv_0"]["kernel"].shape
    g_shared, m_shared = grad(shared, {"params": params}, task)
    g_split, m_split = grad(per_step, meta, task)
    np.testing.assert_allclose(m_split["objective"], m_shared["objective"], rtol=1e-12)
    for path, g in jax.tree_util.tree_flatten_with_path(g_split["params"])[0]:
      want = g_shared["params"]
      for k in path:
        want = want[k.key]
      name = jax.tree_util.keystr(path)
      if "norm" in name:
        np.testing.assert_allclose(g.sum(0), want, rtol=1e-9, atol=1e-12, err_msg=name)
        assert float(jnp.abs(g[0] - g[1]).max()) > 1e-6, f"{name}: steps 0 and 1 share a gradient"
      else:
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12, err_msg=name)
    # first order with the multi-step loss, the query loss after step t reaches copy t, and it alone
    # (so with every step's loss weighted, every copy gets a gradient of its own)
    first = dataclasses.replace(per_step, first_order=True, multi_step_loss=True)
    for t in range(STEPS):
      g_t, _ = grad(first, meta, task, jnp.zeros(STEPS).at[t].set(1.0))
      for name, g in g_t["params"]["norm_1"].items():
        norms = np.abs(np.asarray(g)).max(axis=1)
        assert norms[t] > 0 and np.count_nonzero(norms) == 1, f"norm_1/{name} after step {t}: {norms}"


@pytest.fixture(scope="module")
def bnrs():
  """A BNRS config (momentum 0.75), its initial state, a task batch and the state after one step."""
  model, variables = _variables()
  params, stats, apply_fn = functional_with_stats(model, variables)
  cfg = _config(apply_fn, per_step_filter=is_batch_norm, running_stats=RunningStats(lambda: stats, 0.75))
  state, tasks = gradient.init(cfg, params, jax.random.PRNGKey(0)), _tasks(jax.random.PRNGKey(2))
  new, metrics = jax.jit(gradient.meta_step, static_argnames="config")(state, tasks, config=cfg)
  assert "batch_stats" not in metrics
  return cfg, state, tasks, new


def test_running_statistics_are_the_moving_average_of_each_steps_batch_statistics(bnrs):
  cfg, state, tasks, new = bnrs
  assert new.meta_params["bn_stats"]["norm_2"]["var"].shape == (STEPS, 4)
  # step 0 normalises the support set with the initial parameters: its batch statistics, by hand
  first = gradient.initial_params(cfg, state.meta_params)["params"]
  batch0 = [cfg.apply_fn(first, x, None)[1] for x in tasks.x_support]
  want = jax.tree.map(lambda old, *b: 0.75 * old[0] + 0.25 * np.mean(b, axis=0), state.meta_params["bn_stats"], *batch0)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], new.meta_params["bn_stats"]), want, rtol=1e-5, atol=1e-6)
  # every step has moved from the initial statistics, each to its own values
  for s in jax.tree.leaves(new.meta_params["bn_stats"]):
    assert float(jnp.abs(s[0] - s[1]).max()) > 0
  assert not np.allclose(new.meta_params["bn_stats"]["norm_0"]["var"], 1.0)


def test_running_statistics_make_evaluation_independent_of_the_other_query_examples(bnrs):
  cfg, _, tasks, state = bnrs
  task = jax.tree.map(lambda a: a[0], tasks)
  other = task._replace(x_query=task.x_query.at[1:].set(jax.random.normal(jax.random.PRNGKey(4),
                                                                           task.x_query[1:].shape)))
  # the same parameters, normalised with each batch's statistics
  batch_cfg = _config(lambda p, x: cfg.apply_fn(p, x, None)[0], per_step_filter=is_batch_norm)
  batch_state = state._replace(meta_params={"params": state.meta_params["params"]})
  predict = jax.jit(lambda cfg, state, task: gradient.predict(state, task, config=cfg)[0], static_argnums=0)
  np.testing.assert_allclose(predict(cfg, state, task), predict(cfg, state, other), rtol=1e-5, atol=1e-6)
  assert not np.allclose(predict(batch_cfg, batch_state, task), predict(batch_cfg, batch_state, other), atol=1e-4)
  assert not np.allclose(predict(cfg, state, task), predict(batch_cfg, batch_state, task), atol=1e-4)


def test_registry_maml_plus_plus_on_images_maps_tasks_as_it_vmaps_them():
  built = {s: REGISTRY["maml++"].build(Setup(x_shape=(SIZE, SIZE, 1), ways=WAYS, width=4, inner_steps=STEPS,
                                             inner_lr=0.1, task_strategy=s), jax.random.PRNGKey(0))
           for s in ("vmap", "map")}
  learner, params = built["vmap"]
  state = learner.init(jax.random.PRNGKey(1), params)
  assert state.meta_params["params"]["norm_1"]["bias"].shape == (STEPS, 4)
  tasks = _tasks(jax.random.PRNGKey(5))
  stepped = jax.jit(learner.meta_step)(state, tasks)
  chex.assert_trees_all_close(jax.jit(built["map"][0].meta_step)(state, tasks), stepped, rtol=1e-5, atol=1e-6)
  metrics = jax.jit(learner.evaluate, static_argnames="inner_steps")(stepped[0], tasks, inner_steps=2 * STEPS)
  assert metrics["accuracy"].shape == (2,) and np.isfinite(metrics["loss"]).all()


def test_bad_per_step_options_are_named():
  model, variables = _variables()
  params, apply_fn = functional(model, variables)
  with pytest.raises(ValueError, match="momentum"):
    RunningStats(lambda: {}, momentum=1.0)
  with pytest.raises(TypeError, match="RunningStats"):
    _config(apply_fn, running_stats=lambda: {})
  config = _config(apply_fn, per_step_filter=is_batch_norm)
  with pytest.raises(ValueError, match=r"inner_steps=2 copies .*norm_0/bias \(4,\)"):
    gradient.meta_grad(gradient.init(config, params, jax.random.PRNGKey(0))._replace(
        meta_params={"params": params}), _tasks(jax.random.PRNGKey(3)), config=config)
  with pytest.raises(ValueError, match="selects no parameter"):
    gradient.init(_config(apply_fn, per_step_filter=lambda path: "nothing" in path), params, jax.random.PRNGKey(0))
  mlp = MLP(hidden=(4,), out=1)
  with pytest.raises(ValueError, match="batch_stats"):
    functional_with_stats(mlp, mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
