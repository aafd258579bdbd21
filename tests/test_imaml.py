"""iMAML: the implicit meta-gradient against closed forms, an unrolled reference and MAML;
its memory against the inner-step count."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.core import Task, losses
from metajax.data import sinusoid
from metajax.learners import gradient, implicit
from metajax.models import MLP, Conv4, functional


def _linear_task(key, d=4, n=6):
  k = jax.random.split(key, 5)
  task = Task(jax.random.normal(k[0], (n, d)), jax.random.normal(k[1], (n, 1)),
              jax.random.normal(k[2], (n, d)), jax.random.normal(k[3], (n, 1)))
  return task, {"w": jax.random.normal(k[4], (d, 1))}


@pytest.mark.parametrize("hvp", ["reverse", "forward"])
def test_quadratic_inner_problem_gives_the_closed_form_meta_gradient_at_float64(hvp):
  with jax.enable_x64(True):
    task, theta = _linear_task(jax.random.PRNGKey(0))
    d, n, lam = 4, 6, 0.7
    config = implicit.IMAMLConfig(lambda p, x: x @ p["w"], inner_steps=3000, inner_lr=0.05, lam=lam,
                                  cg_steps=d, cg_tol=0.0, hvp=hvp)
    grad = jax.jit(jax.grad(lambda t: implicit.task_objective(config, {"params": t}, task)[0]))(theta)["w"]
    xs, ys, xq, yq = task
    hessian = 2 / n * xs.T @ xs  # of the mean squared error
    phi = jnp.linalg.solve(hessian + lam * jnp.eye(d), 2 / n * xs.T @ ys + lam * theta["w"])
    expected = lam * jnp.linalg.solve(hessian + lam * jnp.eye(d), 2 / n * xq.T @ (xq @ phi - yq))
    assert grad.dtype == jnp.float64
    np.testing.assert_allclose(implicit.proximal_solve(config, theta, task, 3000)[0]["w"], phi, atol=1e-12)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-8 * float(jnp.abs(expected).max()))


class _TanhMLP(nn.Module):
  """A smooth network: gradient descent converges to the inner optimum (ReLU kinks make it chatter)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(jnp.tanh(nn.Dense(16)(jnp.tanh(nn.Dense(16)(x)))))


def _sinusoid_setup(steps, lam=4.0, lr=0.02):
  model = _TanhMLP()
  params, apply_fn = functional(model, model.init(jax.random.PRNGKey(1), jnp.zeros((1, 1))))
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  task = jax.tree.map(lambda a: a[0].astype(jnp.float64) if a.dtype == jnp.float32 else a[0],
                      sinusoid.sample(jax.random.PRNGKey(2), 1, 10, 10))
  config = implicit.IMAMLConfig(apply_fn, inner_steps=steps, inner_lr=lr, lam=lam, cg_steps=200, cg_tol=1e-14)
  return config, params, task


def _unrolled_grad(config, params, task):
  """Second-order MAML through the same proximal inner loop (θ in the start and the centre)."""
  def objective(theta):
    phi = gradient.adapt_task(config, {"params": theta}, task, config.inner_steps, False, False)[0]
    return config.loss_fn(config.apply_fn(phi, task.x_query), task.y_query)
  return jax.grad(objective)(params)


def _implicit_grad(config, params, task):
  return jax.grad(lambda t: implicit.task_objective(config, {"params": t}, task)[0])(params)


def _rel_err(a, b):
  a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)]) for t in (a, b))
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_at_the_inner_optimum_the_implicit_gradient_equals_maml_through_a_long_inner_loop():
  with jax.enable_x64(True):
    config, params, task = _sinusoid_setup(steps=3000)
    implicit_g = jax.jit(lambda p: _implicit_grad(config, p, task))(params)
    unrolled_g = jax.jit(lambda p: _unrolled_grad(config, p, task))(params)
    assert _rel_err(implicit_g, unrolled_g) < 1e-6
    # Far from the optimum (2 steps) the two differ: the test can tell them apart.
    short, _, _ = _sinusoid_setup(steps=2)
    assert _rel_err(_implicit_grad(short, params, task), _unrolled_grad(short, params, task)) > 1e-2


@pytest.mark.slow  # three Conv4 compiles (~25 s); the closed-form test checks both modes on every run
def test_forward_and_reverse_hessian_vector_products_agree_on_conv4():
  model = Conv4(num_classes=3, width=4, conv_impl="xla")
  x = jax.random.uniform(jax.random.PRNGKey(0), (6, 16, 16, 1))
  params, apply_fn = functional(model, model.init(jax.random.PRNGKey(1), x))
  task = Task(x, jnp.arange(6) % 3, x[::-1], jnp.arange(6) % 3)
  grads = {}
  for hvp in ("reverse", "forward"):
    config = implicit.IMAMLConfig(apply_fn, loss_fn=losses.cross_entropy, inner_steps=5, inner_lr=0.1, hvp=hvp)
    grads[hvp] = jax.jit(lambda p, c=config: _implicit_grad(c, p, task))(params)
  assert _rel_err(grads["forward"], grads["reverse"]) < 1e-4
  # The default (custom-VJP) convolution has no forward mode; reverse HVPs differentiate it.
  model = Conv4(num_classes=3, width=4)
  _, apply_vjp = functional(model, model.init(jax.random.PRNGKey(1), x))
  config = implicit.IMAMLConfig(apply_vjp, loss_fn=losses.cross_entropy, inner_steps=5, inner_lr=0.1)
  assert _rel_err(jax.jit(lambda p: _implicit_grad(config, p, task))(params), grads["reverse"]) < 1e-4


def _temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_stays_flat_in_inner_steps_while_second_order_maml_grows():
  model = MLP(hidden=(40, 40), out=1)
  params, apply_fn = functional(model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
  batch = sinusoid.sample(jax.random.PRNGKey(1), 4, 10, 10)
  temp = {}
  for steps in (5, 100):
    for name, config in (("imaml", implicit.IMAMLConfig(apply_fn, inner_steps=steps)),
                         ("maml", gradient.MAMLConfig(apply_fn, inner_steps=steps))):
      module = implicit if name == "imaml" else gradient
      temp[name, steps] = _temp_bytes(lambda s, b, c=config, m=module: m.meta_grad(s, b, config=c),
                                      gradient.init(config, params, jax.random.PRNGKey(2)), batch)
  assert temp["imaml", 100] <= 1.1 * temp["imaml", 5] + 4096, temp
  assert temp["maml", 100] > 5 * temp["maml", 5], temp


def test_implicit_gradient_differs_from_first_order_maml():
  model = MLP(hidden=(40, 40), out=1)
  params, apply_fn = functional(model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
  batch = sinusoid.sample(jax.random.PRNGKey(2), 8, 10, 10)
  imaml = implicit.IMAMLConfig(apply_fn, inner_steps=10, inner_lr=0.02, lam=1.0)
  fo = gradient.MAMLConfig(apply_fn, inner_steps=10, inner_lr=0.02, first_order=True)
  state = gradient.init(imaml, params, jax.random.PRNGKey(1))
  g_imaml, metrics = implicit.meta_grad(state, batch, config=imaml)
  g_fo = gradient.meta_grad(state, batch, config=fo)[0]
  assert _rel_err(g_imaml, g_fo) > 1e-2
  assert set(metrics) == {"loss", "support_loss", "objective"}
