"""The conformance suite: every registered learner, through the MetaLearner protocol only.

A new learner is tested here by registering it (``metajax.learners.register``). Each
learner is built by its registry entry for a tiny dense setting (compile time is what
this suite spends): sinusoid regression, or for classifiers synthetic 8-d classes (a
centre per class plus noise, so that few-shot learning is possible). Conv4 on images is
exercised by the learners' own tests and the CLI tests.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from metajax.core import METRICS, MetaState, Task, resolve_strategy, train_steps
from metajax.data import sinusoid
from metajax.harness import checkpoint
from metajax.learners import REGISTRY, Setup

NAMES = sorted(REGISTRY)
TASKS, SHOTS, QUERIES = 4, 5, 6  # sinusoid tasks
WAYS, SHOTS_PER_CLASS, DIM = 3, 2, 8  # classification tasks


def _setup(name: str, **overrides) -> Setup:
  if REGISTRY[name].classification_only:
    base = dict(x_shape=(DIM,), ways=WAYS, inner_steps=2, inner_lr=0.1)
  else:
    base = dict(x_shape=(1,), ways=None, inner_steps=2, inner_lr=0.01)
  return Setup(**{**base, **overrides})


def _clusters(key: jax.Array, tasks: int) -> Task:
  """``tasks`` few-shot tasks over 12 fixed classes in R^8 (centre + noise), labels in random order."""
  centres = jax.random.normal(jax.random.PRNGKey(42), (12, DIM))

  def one(k):
    k_cls, k_noise = jax.random.split(k)
    classes = jax.random.choice(k_cls, 12, (WAYS,), replace=False)
    per_class = 2 * SHOTS_PER_CLASS
    x = centres[classes][:, None] + 0.5 * jax.random.normal(k_noise, (WAYS, per_class, DIM))
    y = jnp.broadcast_to(jnp.arange(WAYS)[:, None], (WAYS, per_class))
    half = lambda a: a[:, :SHOTS_PER_CLASS].reshape(-1, *a.shape[2:])
    rest = lambda a: a[:, SHOTS_PER_CLASS:].reshape(-1, *a.shape[2:])
    return Task(half(x), half(y), rest(x), rest(y))

  return jax.vmap(one)(jax.random.split(key, tasks))


def _sampler(name: str, tasks: int = TASKS):
  if REGISTRY[name].classification_only:
    return lambda key: _clusters(key, tasks)
  return lambda key: sinusoid.sample(key, num_tasks=tasks, shots=SHOTS, queries=QUERIES)


@functools.lru_cache(maxsize=None)
def _built(name: str, strategy: str = "auto", adam: bool = False):
  """``(learner, state, sample_fn)``. The outer optimizer is SGD with momentum (its first update
  is proportional to the gradient, and its state is not empty), or Adam for learning curves."""
  optimizer = optax.adam(3e-3) if adam else optax.sgd(3e-3, momentum=0.9)
  learner, params = REGISTRY[name].build(_setup(name, optimizer=optimizer, task_strategy=strategy),
                                         jax.random.PRNGKey(0))
  return learner, learner.init(jax.random.PRNGKey(1), params), _sampler(name)


def _batch(name: str, seed: int = 0):
  return _sampler(name)(jax.random.PRNGKey(100 + seed))


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
  """The learner's functions jitted once; ``meta_step`` and ``evaluate`` fail on a second trace."""
  learner = _built(name)[0]
  return (jax.jit(chex.assert_max_traces(lambda s, b: learner.meta_step(s, b), n=1)),
          jax.jit(chex.assert_max_traces(lambda s, b: learner.evaluate(s, b), n=1)),
          jax.jit(learner.predict, static_argnames="inner_steps"))


def _close(a, b, rtol=2e-4, atol=1e-5):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True, scope="module")
def _forget_learners():
  yield
  for cached in (_built, _jitted):
    cached.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_trace_counters():
  chex.clear_trace_counter()  # counters are kept per function code, shared by every learner
  yield


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_metric_vocabulary_and_no_retrace(name):
  learner, state, _ = _built(name)
  meta_step, evaluate, predict = _jitted(name)
  for seed in range(3):  # new task batches never retrace (assert_max_traces)
    batch = _batch(name, seed)
    new, metrics = meta_step(state, batch)
    per_task = evaluate(new, batch)
  assert isinstance(new, MetaState) and int(new.step) == int(state.step) + 1
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  assert {"loss", "objective", "grad_norm"} <= set(metrics) <= set(METRICS), sorted(metrics)
  assert all(np.shape(v) == () and np.isfinite(v) for v in metrics.values()), metrics
  assert "loss" in per_task and set(per_task) <= set(METRICS) - {"objective", "grad_norm"}, sorted(per_task)
  assert all(np.shape(v) == (TASKS,) for v in per_task.values())
  assert ("accuracy" in per_task) == REGISTRY[name].classification_only
  task = jax.tree.map(lambda x: x[0], batch)
  outputs = WAYS if REGISTRY[name].classification_only else 1
  assert predict(new, task).shape == (task.x_query.shape[0], outputs)


@pytest.mark.parametrize("name", NAMES)
def test_inner_steps_override_is_honoured_or_refused(name):
  learner, state, _ = _built(name)
  batch = _batch(name)
  if REGISTRY[name].eval_inner_steps:
    evaluate = jax.jit(learner.evaluate, static_argnames="inner_steps")
    one, three = evaluate(state, batch, inner_steps=1), evaluate(state, batch, inner_steps=3)
    assert not np.allclose(one["loss"], three["loss"])
  else:
    with pytest.raises(ValueError, match="inner_steps must be None"):
      learner.evaluate(state, batch, inner_steps=3)


class JitConformance(chex.TestCase):
  """``chex.variants``: the same learner function jitted and not gives the same numbers."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*NAMES)
  def test_meta_step_and_evaluate_jit_equal_no_jit(self, name):
    learner, state, _ = _built(name)
    meta_step, evaluate, _ = _jitted(name)
    batch = _batch(name)
    want_state, want_metrics = meta_step(state, batch)
    got_state, got_metrics = self.variant(learner.meta_step)(state, batch)
    _close(got_state, want_state)
    _close(got_metrics, want_metrics)
    _close(self.variant(learner.evaluate)(state, batch), evaluate(state, batch))


@pytest.mark.parametrize("name", NAMES)
def test_task_strategies_equal_a_python_loop_over_tasks(name):
  """Every strategy gives the same step; and, for learners whose step is the mean of
  independent per-task gradients, a step on a batch equals the mean of steps on its tasks
  one by one (the first momentum-SGD update is linear in the gradient), and so do its metrics
  but ``grad_norm``, a norm of that mean."""
  learner, state, _ = _built(name)
  meta_step = _jitted(name)[0]
  batch = _batch(name)
  want = meta_step(state, batch)
  for strategy in {"vmap", "map", "unroll"} - {resolve_strategy("auto", batch)}:  # "auto" gave `want`
    _close(jax.jit(_built(name, strategy)[0].meta_step)(state, batch), want)
  if not REGISTRY[name].mean_of_task_grads:
    return
  step = jax.jit(learner.meta_step)
  singles = [step(state, jax.tree.map(lambda x, i=i: x[i:i + 1], batch)) for i in range(TASKS)]
  mean = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *singles)
  _close(want[0].meta_params, mean[0].meta_params)
  norm_free = lambda metrics: {k: v for k, v in metrics.items() if k != "grad_norm"}
  _close(norm_free(want[1]), norm_free(mean[1]))


@pytest.mark.parametrize("name", NAMES)
def test_every_meta_parameter_receives_a_gradient(name):
  _, state, _ = _built(name)
  new, _ = _jitted(name)[0](state, _batch(name))
  for (path, before), after in zip(jax.tree_util.tree_flatten_with_path(state.meta_params)[0],
                                   jax.tree.leaves(new.meta_params)):
    assert float(jnp.abs(after - before).max()) > 0, f"{name}: no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_continues_identically(name, tmp_path):
  _, state, _ = _built(name)
  meta_step = _jitted(name)[0]
  state, _ = meta_step(state, _batch(name, 0))
  mngr = checkpoint.manager(tmp_path / "ckpt")
  checkpoint.save(mngr, state)
  restored = checkpoint.restore(mngr, jax.tree.map(jnp.zeros_like, state))
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(meta_step(restored, _batch(name, 1)), meta_step(state, _batch(name, 1)))


@pytest.mark.parametrize("name", NAMES)
def test_float64_state_stays_float64_under_x64(name):
  with jax.enable_x64(True):
    learner, params = REGISTRY[name].build(_setup(name, optimizer=optax.adam(1e-3)), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    state = learner.init(jax.random.PRNGKey(1), params)
    batch = _batch(name)
    batch = batch._replace(x_support=batch.x_support.astype(jnp.float64), x_query=batch.x_query.astype(jnp.float64))
    if not REGISTRY[name].classification_only:
      batch = batch._replace(y_support=batch.y_support.astype(jnp.float64), y_query=batch.y_query.astype(jnp.float64))
    new, metrics = jax.jit(learner.meta_step)(state, batch)
    dtypes = {jnp.result_type(x) for x in jax.tree.leaves(new.meta_params)}
    assert dtypes == {jnp.dtype("float64")}, f"{name}: meta-parameters {dtypes}"
    assert jnp.result_type(metrics["loss"]) == jnp.float64


@pytest.mark.parametrize("name", NAMES)
def test_determinism_and_a_tiny_learning_curve(name):
  """40 steps of ``train_steps`` twice from one key give identical states, from another key
  another; and 120 steps (three such calls: one compiled program) lower the held-out query loss."""
  learner, state, sample = _built(name, adam=True)
  evaluate = jax.jit(learner.evaluate)
  held_out = [_batch(name, seed) for seed in range(10, 15)]
  held_out_loss = lambda s: float(np.mean([evaluate(s, b)["loss"] for b in held_out]))
  run = lambda s: train_steps(s, meta_step=learner.meta_step, sample_fn=sample, num_steps=40)
  first, again = run(state), run(state)
  chex.assert_trees_all_equal(first, again)
  other, _ = run(state._replace(key=jax.random.PRNGKey(7)))
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(first[0].meta_params),
                                                     jax.tree.leaves(other.meta_params)))
  trained = run(run(first[0])[0])
  assert int(trained[0].step) == int(state.step) + 120
  before, after = held_out_loss(state), held_out_loss(trained[0])
  assert after < 0.9 * before, f"{name}: held-out query loss {before:.4f} -> {after:.4f}"
