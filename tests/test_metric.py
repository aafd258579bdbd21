"""Prototypical, Matching and Relation networks."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax.core import MetaState, Task, train_steps
from metajax.data import episodes, omniglot
from metajax.learners import metric
from metajax.models import MLP, Conv4, functional
from tests.test_data import SHARED, needs_shared

identity = lambda params, x: x * params["scale"]


def _predict(learner, params, task):
  return learner.predict(MetaState({"params": params}, None, None, None), task)


def _toy_task():
  xs = jnp.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
  ys = jnp.array([0, 0, 1, 1])
  xq = jnp.array([[1.0, 1.0], [9.0, 9.0]])
  return Task(xs, ys, xq, jnp.array([0, 1]))


def test_prototypical_logits_equal_a_hand_computation():
  scores = _predict(metric.prototypical(identity, ways=2), {"scale": 1.0}, _toy_task())
  # prototypes (1, 0) and (10, 11); query (1, 1): distances 1 and 81+100; query (9, 9): 64+81 and 1+4
  np.testing.assert_allclose(scores, [[-1.0, -181.0], [-145.0, -5.0]])


def test_prototypical_embeds_support_and_query_as_one_batch():
  # An embedding that centres its batch, as BatchNorm in training mode does: with support and query in one
  # batch, both move alike and the distances are the uncentred ones (separately, the query set's mean,
  # (5, 5), and the support set's, (5.5, 5.5), would shift them apart).
  centre = lambda params, x: x - x.mean(0)
  task = _toy_task()
  np.testing.assert_allclose(_predict(metric.prototypical(centre, ways=2), {}, task),
                             _predict(metric.prototypical(identity, ways=2), {"scale": 1.0}, task), rtol=1e-6)


def test_prototypical_gradient_runs_at_omniglot_s_60_way_5_shot_size():
  # Slicing one embedded batch into support and query rows gave a gradient that segfaults XLA:CPU
  # (jaxlib 0.10.2) from 300 rows of each (benchmarks/probes/xla_cpu_pad_dot_crash.py).
  ways, shots, queries, d = 60, 5, 5, 64
  key_s, key_q, key_w = jax.random.split(jax.random.PRNGKey(0), 3)
  labels = jnp.repeat(jnp.arange(ways), shots)
  task = Task(jax.random.normal(key_s, (ways * shots, d)), labels, jax.random.normal(key_q, (ways * queries, d)),
              jnp.repeat(jnp.arange(ways), queries))
  learner = metric.prototypical(lambda params, x: x @ params["w"], ways)
  loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(_predict(learner, {"w": w}, task), task.y_query).mean()
  w = jax.random.normal(key_w, (d, d)) / 8
  grad = jax.jit(jax.grad(loss))(w)
  eps = 1e-3 * jax.random.normal(jax.random.PRNGKey(1), (d, d))
  np.testing.assert_allclose(float(jnp.vdot(grad, eps)), float(loss(w + eps) - loss(w - eps)) / 2, rtol=2e-2)


def test_matching_attention_sums_to_one_and_predicts_neighbours():
  key = jax.random.PRNGKey(0)
  attention = metric.matching_attention(jax.random.normal(key, (7, 5)), jax.random.normal(key, (4, 5)))
  np.testing.assert_allclose(attention.sum(-1), np.ones(7), rtol=1e-6)
  assert (attention >= 0).all()
  probs = jnp.exp(_predict(metric.matching(identity, ways=2), {"scale": 1.0}, _toy_task()._replace(
      x_support=jnp.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]),
      x_query=jnp.array([[1.0, 0.05], [0.05, 1.0]]))))
  np.testing.assert_allclose(probs.sum(-1), [1.0, 1.0], rtol=1e-5)
  assert probs[0, 0] > probs[0, 1] and probs[1, 1] > probs[1, 0]


def test_matching_attention_without_query_normalisation_sharpens_with_the_query_norm():
  query, support = jax.random.normal(jax.random.PRNGKey(0), (3, 5)), jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  cosine = metric.matching_attention(query, support)
  unit = query / jnp.linalg.norm(query, axis=-1, keepdims=True)
  np.testing.assert_allclose(metric.matching_attention(unit, support, normalize_query=False), cosine, rtol=1e-5)
  sharp = metric.matching_attention(10 * unit, support, normalize_query=False)
  np.testing.assert_array_equal(sharp.argmax(-1), cosine.argmax(-1))
  assert (sharp.max(-1) > cosine.max(-1)).all()
  np.testing.assert_allclose(sharp.sum(-1), np.ones(3), rtol=1e-6)


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


def test_full_context_embeddings_receive_gradients_and_change_predictions():
  """Matching with FCE (not in the registry, so not in the conformance suite): every parameter
  gets a gradient, and the FCE changes the scores of the plain matching network."""
  key = jax.random.PRNGKey(0)
  learners = _learners(key)
  batch = _image_tasks(key)
  fce, params = learners["matching-fce"]
  state = fce.init(key, params)
  new, _ = jax.jit(fce.meta_step)(state, batch)
  for (path, before), after in zip(jax.tree_util.tree_flatten_with_path(state.meta_params)[0],
                                   jax.tree.leaves(new.meta_params)):
    assert float(jnp.abs(after - before).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"
  plain, plain_params = learners["matching"]
  task = jax.tree.map(lambda x: x[0], batch)
  assert not np.allclose(fce.predict(state, task), _predict(plain, plain_params, task), atol=1e-4)


def test_protonet_ignores_a_shift_shared_by_all_embeddings():
  key = jax.random.PRNGKey(0)
  learner, params = _learners(key)["protonet"]
  task = jax.tree.map(lambda x: x[0], _image_tasks(key))
  shifted = jax.tree.map(lambda x: x, params)
  shifted["head"]["bias"] = params["head"]["bias"] + 3.0
  np.testing.assert_allclose(_predict(learner, shifted, task), _predict(learner, params, task), rtol=1e-4, atol=1e-4)


def test_evaluate_returns_per_task_metrics():
  key = jax.random.PRNGKey(1)
  learner, params = _learners(key)["protonet"]
  out = jax.jit(learner.evaluate)(learner.init(key, params), _image_tasks(key))
  assert set(out) == {"loss", "accuracy"} and out["accuracy"].shape == (3,) and out["loss"].shape == (3,)


def test_bad_ways_is_named():
  with pytest.raises(ValueError, match="ways"):
    metric.prototypical(identity, ways=1)


@needs_shared
@pytest.mark.parametrize("name", ["protonet", pytest.param("matching", marks=pytest.mark.slow),
                                  pytest.param("relation", marks=pytest.mark.slow)])
def test_each_learner_beats_its_initialisation_on_held_out_omniglot(name, tmp_path):
  train = jnp.asarray(omniglot.load("background_small1", SHARED, cache_dir=tmp_path).images)
  test = jnp.asarray(omniglot.load("background_small2", SHARED, cache_dir=tmp_path).images[:96 * 4])
  key = jax.random.PRNGKey(0)
  embed = Conv4(num_classes=None, width=16)
  embed_params, embed_fn = functional(embed, embed.init(key, jnp.zeros((5, 28, 28, 1))))
  if name == "relation":
    rel = MLP(hidden=(16,), out=1)
    rel_params, rel_fn = functional(rel, rel.init(key, jnp.zeros((1, 32))))
    learner, params = metric.relation(embed_fn, rel_fn, 5), {"embed": embed_params, "relation": rel_params}
  else:
    learner, params = getattr(metric, {"protonet": "prototypical", "matching": "matching"}[name])(
        embed_fn, 5), embed_params
  sample = functools.partial(episodes.sample, num_tasks=4, ways=5, shots=1, queries=5)
  held_out = episodes.sample(jax.random.PRNGKey(9), test, num_tasks=100, ways=5, shots=1, queries=5)
  state = learner.init(key, params)
  evaluate = jax.jit(learner.evaluate)
  before = float(evaluate(state, held_out)["accuracy"].mean())
  state, _ = train_steps(state, train, meta_step=learner.meta_step, sample_fn=sample, num_steps=150)
  after = float(evaluate(state, held_out)["accuracy"].mean())
  assert after > before + 0.1, f"{name}: {before=} {after=}"
