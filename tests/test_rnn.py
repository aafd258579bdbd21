"""Black-box RNN learner and Meta-LSTM."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metajax import learner, maml, rnn
from metajax.core import losses
from metajax.data import episodes, sinusoid
from metajax.models import Conv4, functional
from tests.conftest import tiny_mlp
from tests.learner_checks import assert_learner_contract


def _black_box(key, cell="lstm", ways=None, encoder=None, hidden=16, x0=jnp.zeros((5, 1)), **kwargs):
  module = rnn.BlackBoxRNN(out=ways or 1, hidden=hidden, cell=cell, encoder=encoder)
  y0 = jnp.zeros((x0.shape[0], ways or 1))
  params, apply = functional(module, module.init(key, x0, y0, x0))
  return rnn.black_box(apply, ways, **kwargs), params


def _meta_lstm(key, apply_fn, params, steps=3, **kwargs):
  cell = rnn.MetaLSTMCell(hidden=6)
  theta = ravel_pytree(params)[0]
  cell_params = cell.init(key, cell.initial_state(theta), theta, jnp.float32(0.0))["params"]
  config = rnn.meta_lstm(apply_fn, cell, steps=steps, inner_loss_fn=losses.mse, **kwargs)
  return config, {"learner": params, "meta_lstm": cell_params}


@pytest.mark.parametrize("cell", ["lstm", "gru", "optimized_lstm"])
def test_black_box_sinusoid_contract(cell, batch, key):
  config, params = _black_box(key, cell, optimizer=optax.sgd(0.1))
  assert config.predict_fn(params, jax.tree.map(lambda x: x[0], batch)).shape == (6, 1)
  assert_learner_contract(config, params, batch, full=cell == "lstm")


def test_black_box_classifier_with_conv_encoder_contract(key):
  images = (jax.random.uniform(key, (8, 5, 16, 16)) * 255).astype(jnp.uint8)
  batch = episodes.sample(key, images, num_tasks=3, ways=3, shots=2, queries=2)
  encoder = Conv4(num_classes=None, width=4)
  config, params = _black_box(key, ways=3, encoder=encoder, x0=jnp.zeros((6, 16, 16, 1)),
                              optimizer=optax.sgd(0.1))
  logits = config.predict_fn(params, jax.tree.map(lambda x: x[0], batch))
  assert logits.shape == (6, 3)
  assert_learner_contract(config, params, batch, full=False)


def test_black_box_queries_are_independent_and_support_labels_matter(batch, key):
  config, params = _black_box(key)
  task = jax.tree.map(lambda x: x[0], batch)
  pred = config.predict_fn(params, task)
  moved = config.predict_fn(params, task._replace(x_query=task.x_query.at[1:].set(3.0)))
  np.testing.assert_allclose(moved[0], pred[0], rtol=1e-6)  # query 0 unchanged by the others
  relabelled = config.predict_fn(params, task._replace(y_support=task.y_support.at[2].add(1.0)))
  assert not np.allclose(relabelled, pred)
  # ...but the last support label is only read with the queries, so it matters too
  last = config.predict_fn(params, task._replace(y_support=task.y_support.at[-1].add(1.0)))
  assert not np.allclose(last, pred)


def test_meta_lstm_with_saturated_gates_is_maml(mlp, batch, key):
  """With zero gate weights, forget bias → f = 1 and input bias logit(α) → i = α, the
  Meta-LSTM is plain gradient descent with rate α: its predictions and both its second-
  and first-order gradients with respect to θ_0 equal MAML's and FOMAML's."""
  params, apply_fn = mlp
  alpha, steps = 0.05, 3
  task = jax.tree.map(lambda x: x[0], batch)
  for first_order in (False, True):
    config, meta = _meta_lstm(key, apply_fn, params, steps=steps, first_order=first_order)
    cell = meta["meta_lstm"]
    cell = {**cell, "w_forget": jnp.zeros_like(cell["w_forget"]), "w_input": jnp.zeros_like(cell["w_input"]),
            "b_forget": jnp.float32(40.0), "b_input": jnp.log(alpha / (1 - alpha))}
    meta = {**meta, "meta_lstm": cell}
    mconfig = maml.MAMLConfig(apply_fn, inner_steps=steps, inner_lr=alpha, first_order=first_order)
    mstate = maml.init(mconfig, params, key)
    adapted = maml.adapt_params(mconfig, mstate, task, steps)
    np.testing.assert_allclose(config.predict_fn(meta, task), apply_fn(adapted, task.x_query),
                               rtol=1e-5, atol=1e-6)
    got = jax.grad(lambda p: learner.task_loss(config, {"params": {**meta, "learner": p}}, task)[0])(params)
    want = jax.grad(lambda p: maml.task_objective(mconfig, {"params": p}, task)[0])(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_meta_lstm_contract_and_first_order_differs(batch, key):
  params, apply_fn = tiny_mlp(key)
  config, meta = _meta_lstm(key, apply_fn, params, first_order=False, optimizer=optax.sgd(0.1))
  assert_learner_contract(config, meta, batch, full=False)
  fo, _ = _meta_lstm(key, apply_fn, params)
  task = jax.tree.map(lambda x: x[0], batch)
  second = jax.grad(lambda m: learner.task_loss(config, {"params": m}, task)[0])(meta)
  first = jax.grad(lambda m: learner.task_loss(fo, {"params": m}, task)[0])(meta)
  assert not np.allclose(ravel_pytree(first)[0], ravel_pytree(second)[0], rtol=1e-3)


@pytest.mark.parametrize("which", ["black_box", "meta_lstm"])
def test_recurrent_learners_beat_their_initialisation_on_held_out_sinusoids(which, key):
  if which == "black_box":
    config, params = _black_box(key, hidden=64, optimizer=optax.adam(1e-2))
  else:
    mlp_params, apply_fn = tiny_mlp(key, hidden=(40, 40))
    config, params = _meta_lstm(key, apply_fn, mlp_params, steps=5, optimizer=optax.adam(1e-2))
  state = learner.init(config, params, key)
  held_out = sinusoid.sample(jax.random.PRNGKey(7), num_tasks=200, shots=10, queries=20)
  before = float(learner.evaluate(state, held_out, config=config)["loss"].mean())
  sample = functools.partial(sinusoid.sample, num_tasks=16, shots=10, queries=10)
  steps, bar = (800, 0.25) if which == "black_box" else (400, 0.5)
  state, _ = maml.train_steps(state, config=config, sample_fn=sample, num_steps=steps,
                              step_fn=learner.meta_step)
  after = float(learner.evaluate(state, held_out, config=config)["loss"].mean())
  assert after < bar * before, f"{which}: {before=} {after=}"


def test_bad_recurrent_settings_are_named(mlp, key):
  with pytest.raises(ValueError, match="unknown cell 'rnn'"):
    _black_box(key, cell="rnn")
  with pytest.raises(ValueError, match="steps must be a positive int"):
    rnn.meta_lstm(mlp[1], rnn.MetaLSTMCell(), steps=0)
  with pytest.raises(ValueError, match="ways must be an integer >= 2"):
    rnn.black_box(lambda *a: a, ways=1)
