"""Prototypical, Matching and Relation networks."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import maml, metric
from metajax.core import Task
from metajax.data import episodes, omniglot
from metajax.models import MLP, Conv4, functional
from tests.learner_checks import assert_learner_contract
from tests.test_data import SHARED, needs_shared

identity = lambda params, x: x * params["scale"]


def _toy_task():
  xs = jnp.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
  ys = jnp.array([0, 0, 1, 1])
  xq = jnp.array([[1.0, 1.0], [9.0, 9.0]])
  return Task(xs, ys, xq, jnp.array([0, 1]))


def test_prototypical_logits_equal_a_hand_computation():
  config = metric.prototypical(identity, ways=2)
  scores = config.predict_fn({"scale": 1.0}, _toy_task())
  # prototypes (1, 0) and (10, 11); query (1, 1): distances 1 and 81+100; query (9, 9): 64+81 and 1+4
  np.testing.assert_allclose(scores, [[-1.0, -181.0], [-145.0, -5.0]])


def test_matching_attention_sums_to_one_and_predicts_neighbours():
  key = jax.random.PRNGKey(0)
  attention = metric.matching_attention(jax.random.normal(key, (7, 5)), jax.random.normal(key, (4, 5)))
  np.testing.assert_allclose(attention.sum(-1), np.ones(7), rtol=1e-6)
  assert (attention >= 0).all()
  config = metric.matching(identity, ways=2)
  probs = jnp.exp(config.predict_fn({"scale": 1.0}, _toy_task()._replace(
      x_support=jnp.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]),
      x_query=jnp.array([[1.0, 0.05], [0.05, 1.0]]))))
  np.testing.assert_allclose(probs.sum(-1), [1.0, 1.0], rtol=1e-5)
  assert probs[0, 0] > probs[0, 1] and probs[1, 1] > probs[1, 0]


def _learners(key, ways=3):
  """Each learner over an MLP embedding of flattened 16×16 images (plumbing tests; Conv4 is
  exercised on real Omniglot below)."""
  embed = MLP(hidden=(16,), out=8)
  embed_params, mlp_fn = functional(embed, embed.init(key, jnp.zeros((1, 256))))
  embed_fn = lambda p, x: mlp_fn(p, x.reshape(x.shape[0], -1))
  relation_module = MLP(hidden=(8,), out=1)
  rel_params, rel_fn = functional(relation_module, relation_module.init(key, jnp.zeros((1, 16))))
  fce = metric.FullContextEmbedding(steps=2)
  fce_params, fce_fn = functional(fce, fce.init(key, jnp.zeros((6, 8)), jnp.zeros((6, 8))))
  sgd = optax.sgd(0.1)  # updates proportional to gradients: comparisons are not amplified by Adam
  return {
      "protonet": (metric.prototypical(embed_fn, ways, optimizer=sgd), embed_params),
      "matching": (metric.matching(embed_fn, ways, optimizer=sgd), embed_params),
      "matching-fce": (metric.matching(embed_fn, ways, fce_fn=fce_fn, optimizer=sgd),
                       {"embed": embed_params, "fce": fce_params}),
      "relation": (metric.relation(embed_fn, rel_fn, ways, optimizer=sgd),
                   {"embed": embed_params, "relation": rel_params}),
  }


def _image_tasks(key, tasks=3, ways=3, shots=2, queries=2):
  images = (jax.random.uniform(key, (10, 6, 16, 16)) * 255).astype(jnp.uint8)
  return episodes.sample(key, images, num_tasks=tasks, ways=ways, shots=shots, queries=queries)


@pytest.mark.parametrize("name", ["protonet", "matching", "matching-fce", "relation"])
def test_gradients_reach_every_parameter_strategies_equal_a_loop_and_jit_equals_eager(name):
  key = jax.random.PRNGKey(0)
  config, params = _learners(key)[name]
  batch = _image_tasks(key)
  shift_invariant = lambda where: name == "protonet" and "head" in where and "bias" in where
  assert_learner_contract(config, params, batch, skip=shift_invariant)
  if name == "protonet":  # distances are invariant to a shift shared by all embeddings
    grads = jax.grad(lambda mp: metric.task_loss(config, mp, jax.tree.map(lambda x: x[0], batch))[0])(
        {"params": params})
    assert float(jnp.abs(grads["params"]["head"]["bias"]).max()) < 1e-5


def test_evaluate_returns_per_task_metrics():
  key = jax.random.PRNGKey(1)
  config, params = _learners(key)["protonet"]
  out = metric.evaluate(metric.init(config, params, key), _image_tasks(key), config=config)
  assert out["accuracy"].shape == (3,) and out["loss"].shape == (3,)


def test_bad_ways_is_named():
  with pytest.raises(ValueError, match="ways"):
    metric.prototypical(identity, ways=1)


@needs_shared
@pytest.mark.parametrize("name", ["protonet", "matching", "relation"])
def test_each_learner_beats_its_initialisation_on_held_out_omniglot(name, tmp_path):
  train = jnp.asarray(omniglot.load("background_small1", SHARED, cache_dir=tmp_path).images)
  test = jnp.asarray(omniglot.load("background_small2", SHARED, cache_dir=tmp_path).images[:96 * 4])
  key = jax.random.PRNGKey(0)
  embed = Conv4(num_classes=None, width=16)
  embed_params, embed_fn = functional(embed, embed.init(key, jnp.zeros((5, 28, 28, 1))))
  if name == "relation":
    rel = MLP(hidden=(16,), out=1)
    rel_params, rel_fn = functional(rel, rel.init(key, jnp.zeros((1, 32))))
    config, params = metric.relation(embed_fn, rel_fn, 5), {"embed": embed_params, "relation": rel_params}
  else:
    config, params = getattr(metric, {"protonet": "prototypical", "matching": "matching"}[name])(
        embed_fn, 5), embed_params
  sample = functools.partial(episodes.sample, num_tasks=4, ways=5, shots=1, queries=5)
  held_out = episodes.sample(jax.random.PRNGKey(9), test, num_tasks=100, ways=5, shots=1, queries=5)
  state = metric.init(config, params, key)
  before = float(metric.evaluate(state, held_out, config=config)["accuracy"].mean())
  state, _ = maml.train_steps(state, train, config=config, sample_fn=sample, num_steps=150,
                              step_fn=metric.meta_step)
  after = float(metric.evaluate(state, held_out, config=config)["accuracy"].mean())
  assert after > before + 0.1, f"{name}: {before=} {after=}"
