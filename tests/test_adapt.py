"""The inner loop: gradients against finite differences and unrolled references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.core import adapt, losses
from metajax.data import sinusoid
from tests.conftest import tiny_mlp


def _setup(dtype=jnp.float64):
  key = jax.random.PRNGKey(3)
  params, apply_fn = tiny_mlp(key, hidden=(6,), dtype=dtype)
  task = jax.tree.map(lambda x: x[0].astype(dtype), sinusoid.sample(key, 1, 5, 7))

  def loss(p, data):
    return losses.mse(apply_fn(p, data[0]), data[1])

  return params, apply_fn, task, loss


def _meta_objective(params, task, loss, **kw):
  adapted, _ = adapt(params, (task.x_support, task.y_support), loss, **kw)
  return loss(adapted, (task.x_query, task.y_query))


def _manual(params, task, loss, steps, lr, stop=False):
  """Unrolled reference: plain Python loop of gradient steps."""
  p = params
  for t in range(steps):
    g = jax.grad(loss)(p, (task.x_support, task.y_support))
    if stop:
      g = jax.lax.stop_gradient(g)
    rate = lr[t] if isinstance(lr, list) else lr
    p = jax.tree.map(lambda a, b, r=rate: a - r * b, p, g) if not isinstance(rate, dict) else \
        jax.tree.map(lambda a, b, r: a - r * b, p, g, rate)
  return loss(p, (task.x_query, task.y_query))


def test_second_order_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params, _, task, loss = _setup()
    f = lambda p: _meta_objective(p, task, loss, steps=2, lr=0.05)
    grad = jax.grad(f)(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    g = jax.flatten_util.ravel_pytree(grad)[0]
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(5):
      d = rng.normal(size=flat.shape)
      d /= np.linalg.norm(d)
      fd = (f(unravel(flat + eps * d)) - f(unravel(flat - eps * d))) / (2 * eps)
      np.testing.assert_allclose(float(g @ d), float(fd), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_unrolled_reference(first_order):
  with jax.enable_x64(True):
    params, _, task, loss = _setup()
    ours = jax.grad(lambda p: _meta_objective(p, task, loss, steps=3, lr=0.05,
                                              first_order=first_order))(params)
    ref = jax.grad(lambda p: _manual(p, task, loss, 3, 0.05, stop=first_order))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), ours, ref)


def test_first_order_is_query_gradient_at_adapted_params_and_differs_from_second_order():
  with jax.enable_x64(True):
    params, _, task, loss = _setup()
    fo = jax.grad(lambda p: _meta_objective(p, task, loss, steps=1, lr=0.1, first_order=True))(params)
    so = jax.grad(lambda p: _meta_objective(p, task, loss, steps=1, lr=0.1))(params)
    adapted, _ = adapt(params, (task.x_support, task.y_support), loss, steps=1, lr=0.1)
    expected = jax.grad(loss)(adapted, (task.x_query, task.y_query))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), fo, expected)
    diff = jax.flatten_util.ravel_pytree(jax.tree.map(jnp.subtract, so, fo))[0]
    assert float(jnp.linalg.norm(diff)) > 1e-3 * float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(so)[0]))


def test_per_parameter_and_per_step_rates_match_reference():
  with jax.enable_x64(True):
    params, _, task, loss = _setup()
    per_param = jax.tree.map(lambda p: jnp.full_like(p, 0.03) + 0.01 * jnp.arange(p.size).reshape(p.shape) / p.size, params)
    ours = jax.grad(lambda r: _meta_objective(params, task, loss, steps=2, lr=r), allow_int=True)(per_param)
    ref = jax.grad(lambda r: _manual(params, task, loss, 2, r))(per_param)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), ours, ref)
    per_step = jax.tree.map(lambda p: jnp.array([0.02, 0.07]), params)
    got = _meta_objective(params, task, loss, steps=2, lr=per_step, per_step_lr=True)
    want = _manual(params, task, loss, 2, [jax.tree.map(lambda r: r[0], per_step),
                                          jax.tree.map(lambda r: r[1], per_step)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_mask_adapts_only_selected_leaves():
  params, _, task, loss = _setup(jnp.float32)
  mask = {"hidden_0": {"kernel": False, "bias": False}, "head": {"kernel": True, "bias": True}}
  adapted, _ = adapt(params, (task.x_support, task.y_support), loss, steps=2, lr=0.1, mask=mask)
  np.testing.assert_array_equal(adapted["hidden_0"]["kernel"], params["hidden_0"]["kernel"])
  assert not np.allclose(adapted["head"]["kernel"], params["head"]["kernel"])


def test_remat_and_unroll_give_the_same_gradient():
  params, _, task, loss = _setup(jnp.float32)
  base = jax.grad(lambda p: _meta_objective(p, task, loss, steps=3, lr=0.05))(params)
  for kw in ({"remat": True}, {"unroll": True}):
    other = jax.grad(lambda p: _meta_objective(p, task, loss, steps=3, lr=0.05, **kw))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), base, other)


def test_trace_size_does_not_grow_with_steps():
  params, _, task, loss = _setup(jnp.float32)

  def size(steps, unroll):
    f = lambda p: _meta_objective(p, task, loss, steps=steps, lr=0.05, unroll=unroll)
    return len(jax.jit(jax.grad(f)).lower(params).as_text().splitlines())

  assert size(1, False) == size(25, False)
  assert size(25, True) > 2 * size(1, True)  # the measure can tell


def test_support_losses_are_recorded_per_step_and_decrease():
  params, _, task, loss = _setup(jnp.float32)
  _, info = adapt(params, (task.x_support, task.y_support), loss, steps=5, lr=0.02)
  assert info.support_loss.shape == (5,)
  assert info.support_loss[-1] < info.support_loss[0]


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_non_positive_or_non_int_steps_are_rejected(steps):
  params, _, task, loss = _setup(jnp.float32)
  with pytest.raises(ValueError, match="steps"):
    adapt(params, (task.x_support, task.y_support), loss, steps=steps, lr=0.1)


def test_bad_lr_and_mask_structures_are_rejected():
  params, _, task, loss = _setup(jnp.float32)
  with pytest.raises(ValueError, match="lr"):
    adapt(params, (task.x_support, task.y_support), loss, steps=1, lr={"a": 1.0, "b": 2.0})
  with pytest.raises(ValueError, match="per_step_lr"):
    adapt(params, (task.x_support, task.y_support), loss, steps=3, lr=jnp.ones(2), per_step_lr=True)
  none = jax.tree.map(lambda _: False, params)
  with pytest.raises(ValueError, match="selects no parameter"):
    adapt(params, (task.x_support, task.y_support), loss, steps=1, lr=0.1, mask=none)


def test_inner_optax_optimizer_matches_an_unrolled_momentum_reference_with_second_order_grads():
  import optax
  params, _, task, loss = _setup(jnp.float32)
  sgd = lambda p: _meta_objective(p, task, loss, steps=3, lr=1.0, optimizer=optax.sgd(0.05))
  plain = lambda p: _meta_objective(p, task, loss, steps=3, lr=0.05)
  np.testing.assert_allclose(sgd(params), plain(params), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(jax.grad(sgd)(params)), jax.tree.leaves(jax.grad(plain)(params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  def momentum_reference(p, lr=0.05, beta=0.9):
    velocity = jax.tree.map(jnp.zeros_like, p)
    for _ in range(3):
      g = jax.grad(loss)(p, (task.x_support, task.y_support))
      velocity = jax.tree.map(lambda v, gg: beta * v + gg, velocity, g)
      p = jax.tree.map(lambda a, v: a - lr * v, p, velocity)
    return loss(p, (task.x_query, task.y_query))

  heavy = lambda p: _meta_objective(p, task, loss, steps=3, lr=1.0, optimizer=optax.sgd(0.05, momentum=0.9))
  np.testing.assert_allclose(heavy(params), momentum_reference(params), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(heavy)(params)), jax.tree.leaves(jax.grad(momentum_reference)(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="leave `lr` at 1.0"):
    _meta_objective(params, task, loss, steps=3, lr=0.1, optimizer=optax.sgd(0.05))


def test_interleaved_batches_take_every_class_in_turn_and_cycle():
  from metajax.core import interleaved_batches
  labels = jnp.array([0, 0, 1, 1, 2, 2])   # class-grouped, as episodes.sample makes them
  batches = interleaved_batches(labels, 3, 4)
  np.testing.assert_array_equal(batches, [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5]])
  np.testing.assert_array_equal(interleaved_batches(jnp.array([2, 0, 0, 2]), 2, 2), [[1, 0], [2, 3]])
  regression = jnp.zeros((5, 1))             # targets, not labels: the order is kept, cycling
  np.testing.assert_array_equal(interleaved_batches(regression, 2, 3), [[0, 1], [2, 3], [4, 0]])
  with pytest.raises(ValueError, match="inner mini-batches of 7 exceed the 6 support examples"):
    interleaved_batches(labels, 7, 1)


def test_mini_batch_steps_match_an_unrolled_reference_with_second_order_grads():
  with jax.enable_x64(True):
    params, _, task, loss = _setup()
    support = (task.x_support, task.y_support)
    batches = jnp.array([[0, 1], [2, 3], [4, 0]])

    def reference(p):
      for rows in batches:
        g = jax.grad(loss)(p, (support[0][rows], support[1][rows]))
        p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
      return loss(p, (task.x_query, task.y_query))

    batched = lambda p: _meta_objective(p, task, loss, steps=3, lr=0.1, batches=batches)
    np.testing.assert_allclose(batched(params), reference(params), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(jax.grad(batched)(params)), jax.tree.leaves(jax.grad(reference)(params))):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    whole = lambda p: _meta_objective(p, task, loss, steps=3, lr=0.1)
    assert not np.allclose(batched(params), whole(params))
    every_row = jnp.tile(jnp.arange(5), (3, 1))   # each step's batch is the whole support: plain steps
    np.testing.assert_allclose(_meta_objective(params, task, loss, steps=3, lr=0.1, batches=every_row),
                               whole(params), rtol=1e-12)
