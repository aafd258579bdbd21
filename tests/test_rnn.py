"""Black-box RNN learner and Meta-LSTM."""
from __future__ import annotations

import functools
from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metajax import maml
from metajax.core import losses, train_steps
from metajax.data import episodes, sinusoid
from metajax.learners import recurrent as rnn
from metajax.models import Conv4, functional
from metajax.models import recurrent as cells
from tests.conftest import tiny_mlp


def _black_box(key, cell="lstm", ways=None, encoder=None, hidden=16, x0=jnp.zeros((5, 1)), **kwargs):
  """``(learner, state)``."""
  module = rnn.BlackBoxRNN(out=ways or 1, hidden=hidden, cell=cell, encoder=encoder)
  y0 = jnp.zeros((x0.shape[0], ways or 1))
  params, apply = functional(module, module.init(key, x0, y0, x0))
  learner = rnn.black_box_rnn(apply, ways, **kwargs)
  return learner, learner.init(key, params)


def _meta_lstm(key, apply_fn, params, steps=3, **kwargs):
  """``(learner, state)``; meta-parameters ``{"params": {"learner", "meta_lstm"}}``."""
  cell = rnn.MetaLSTMCell(hidden=6)
  theta = ravel_pytree(params)[0]
  cell_params = cell.init(key, cell.initial_state(theta), theta, jnp.float32(0.0))["params"]
  learner = rnn.meta_lstm(apply_fn, cell, steps=steps, inner_loss_fn=losses.mse, **kwargs)
  return learner, learner.init(key, {"learner": params, "meta_lstm": cell_params})


def _gradient(learner, state, batch):
  """The meta-gradient, read off one plain SGD step of rate 1 (the learner was built with it)."""
  new, _ = jax.jit(learner.meta_step)(state, batch)
  return jax.tree.map(lambda a, b: a - b, state.meta_params, new.meta_params)


@pytest.mark.parametrize("cell", ["gru", "optimized_lstm"])  # "lstm" is the registry's, in the conformance suite
def test_black_box_runs_on_every_cell(cell, batch, key):
  learner, state = _black_box(key, cell, optimizer=optax.sgd(1.0))
  assert learner.predict(state, jax.tree.map(lambda x: x[0], batch)).shape == (6, 1)
  grads = _gradient(learner, state, batch)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_black_box_classifier_with_conv_encoder(key):
  images = (jax.random.uniform(key, (8, 5, 16, 16)) * 255).astype(jnp.uint8)
  batch = episodes.sample(key, images, num_tasks=3, ways=3, shots=2, queries=2)
  encoder = Conv4(num_classes=None, width=4)
  learner, state = _black_box(key, ways=3, encoder=encoder, x0=jnp.zeros((6, 16, 16, 1)))
  assert learner.predict(state, jax.tree.map(lambda x: x[0], batch)).shape == (6, 3)
  assert set(jax.jit(learner.evaluate)(state, batch)) == {"loss", "accuracy"}


def test_black_box_queries_are_independent_and_support_labels_matter(batch, key):
  learner, state = _black_box(key)
  predict = lambda task: learner.predict(state, task)
  task = jax.tree.map(lambda x: x[0], batch)
  pred = predict(task)
  moved = predict(task._replace(x_query=task.x_query.at[1:].set(3.0)))
  np.testing.assert_allclose(moved[0], pred[0], rtol=1e-6)  # query 0 unchanged by the others
  relabelled = predict(task._replace(y_support=task.y_support.at[2].add(1.0)))
  assert not np.allclose(relabelled, pred)
  # ...but the last support label is only read with the queries, so it matters too
  last = predict(task._replace(y_support=task.y_support.at[-1].add(1.0)))
  assert not np.allclose(last, pred)


def test_meta_lstm_with_saturated_gates_is_maml(mlp, batch, key):
  """With zero gate weights, forget bias → f = 1 and input bias logit(α) → i = α, the
  Meta-LSTM is plain gradient descent with rate α: its predictions and both its second-
  and first-order gradients with respect to θ_0 equal MAML's and FOMAML's."""
  params, apply_fn = mlp
  alpha, steps = 0.05, 3
  task = jax.tree.map(lambda x: x[0], batch)
  for first_order in (False, True):
    learner, state = _meta_lstm(key, apply_fn, params, steps=steps, first_order=first_order,
                                optimizer=optax.sgd(1.0))
    cell = state.meta_params["params"]["meta_lstm"]
    cell = {**cell, "w_forget": jnp.zeros_like(cell["w_forget"]), "w_input": jnp.zeros_like(cell["w_input"]),
            "b_forget": jnp.float32(40.0), "b_input": jnp.log(alpha / (1 - alpha))}
    state = learner.init(key, {**state.meta_params["params"], "meta_lstm": cell})
    mconfig = maml.MAMLConfig(apply_fn, inner_steps=steps, inner_lr=alpha, first_order=first_order)
    mstate = maml.init(mconfig, params, key)
    adapted = maml.adapt_params(mconfig, mstate, task, steps)
    np.testing.assert_allclose(learner.predict(state, task), apply_fn(adapted, task.x_query), rtol=1e-5, atol=1e-6)
    got = _gradient(learner, state, batch)["params"]["learner"]
    want = maml.meta_grad(mstate, batch, config=mconfig)[0]["params"]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-6)


def test_meta_lstm_first_order_differs_from_second_order(batch, key):
  params, apply_fn = tiny_mlp(key)
  second = _gradient(*_meta_lstm(key, apply_fn, params, first_order=False, optimizer=optax.sgd(1.0)), batch)
  first = _gradient(*_meta_lstm(key, apply_fn, params, optimizer=optax.sgd(1.0)), batch)
  assert not np.allclose(ravel_pytree(first)[0], ravel_pytree(second)[0], rtol=1e-3)


@pytest.mark.parametrize("which", ["black_box", pytest.param("meta_lstm", marks=pytest.mark.slow)])
def test_recurrent_learners_beat_their_initialisation_on_held_out_sinusoids(which, key):
  if which == "black_box":
    learner, state = _black_box(key, hidden=64, optimizer=optax.adam(1e-2))
  else:
    mlp_params, apply_fn = tiny_mlp(key, hidden=(40, 40))
    learner, state = _meta_lstm(key, apply_fn, mlp_params, steps=5, optimizer=optax.adam(1e-2))
  evaluate = jax.jit(learner.evaluate)
  held_out = sinusoid.sample(jax.random.PRNGKey(7), num_tasks=200, shots=10, queries=20)
  before = float(evaluate(state, held_out)["loss"].mean())
  sample = functools.partial(sinusoid.sample, num_tasks=16, shots=10, queries=10)
  steps, bar = (800, 0.25) if which == "black_box" else (400, 0.5)
  state, _ = train_steps(state, meta_step=learner.meta_step, sample_fn=sample, num_steps=steps)
  after = float(evaluate(state, held_out)["loss"].mean())
  assert after < bar * before, f"{which}: {before=} {after=}"


def test_every_cell_kind_has_its_flax_cell():
  assert tuple(cells.CELLS) == get_args(cells.CellKind)
  for kind, cell in cells.CELLS.items():
    assert isinstance(cells.make_cell(kind, 3, parent=None), cell)


def test_bad_recurrent_settings_are_named(mlp, key):
  with pytest.raises(ValueError, match="unknown cell 'rnn'"):
    _black_box(key, cell="rnn")
  with pytest.raises(ValueError, match="steps must be a positive int"):
    rnn.meta_lstm(mlp[1], rnn.MetaLSTMCell(), steps=0)
  with pytest.raises(ValueError, match="ways must be an integer >= 2"):
    rnn.black_box_rnn(lambda *a: a, ways=1)
