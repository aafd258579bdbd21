"""A learned optimizer (Andrychowicz et al. 2016) as an Optax ``GradientTransformation``.

:class:`LSTMOptimizerNet` is a small coordinate-wise LSTM: every parameter
coordinate is a row of the same recurrent net, which reads the preprocessed
gradient (log-magnitude and sign) and outputs that coordinate's update.
:func:`lstm_optimizer` wraps trained net parameters as an
``optax.GradientTransformation`` — pure ``init``/``update``, state a pytree —
that works in ``optax.chain``, as MAML's outer optimizer and, through
``MAMLConfig(inner_optimizer=...)``, as its inner one.

Meta-training (:func:`meta_step`) draws a batch of problems — tasks plus fresh
optimizee parameters from ``init_fn`` — runs the learned optimizer ``horizon``
steps on each task's support loss, and updates the net by truncated
backpropagation through time: every ``truncation`` steps the mean loss along the
segment is differentiated and the net takes one outer step; optimizee and LSTM
state carry on, with gradients stopped. As in the paper, the optimizee's
gradients are net inputs without second derivatives (``first_order=True``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax.core import losses
from metajax.core.meta import MetaState
from metajax.core.recurrent import log_sign, make_cell, zero_carry
from metajax.core.tasks import Task, check_task, num_tasks
from metajax.core.validate import check_positive_int
from metajax.learner import init  # the initial MetaState: meta_params = {"params": net_params}

__all__ = ["LSTMOptimizerNet", "LearnedOptimizerConfig", "LearnedOptimizerState", "evaluate", "init",
           "lstm_optimizer", "meta_step", "optimize"]

PyTree = Any
Array = jax.Array


class LSTMOptimizerNet(nn.Module):
  """``(carries, grad (n,)) -> (carries, update (n,))``, the same net for every coordinate.

  Attributes:
    hidden: features per layer (20 in the paper).
    layers: stacked cells (2 in the paper).
    cell: ``"lstm"``, ``"optimized_lstm"`` or ``"gru"``.
    output_scale: multiplies the linear read-out (0.1 in the paper).
  """

  hidden: int = 20
  layers: int = 2
  cell: str = "lstm"
  output_scale: float = 0.1

  @nn.nowrap
  def initial_carry(self, n: int) -> tuple:
    """Zero carries of every layer for ``n`` coordinates."""
    return tuple(zero_carry(self.cell, self.hidden, n) for _ in range(self.layers))

  @nn.compact
  def __call__(self, carries: tuple, grad: Array) -> tuple[tuple, Array]:
    x = log_sign(grad)
    new = []
    for i, carry in enumerate(carries):
      carry, x = make_cell(self.cell, self.hidden, name=f"cell_{i}")(carry, x)
      new.append(carry)
    return tuple(new), self.output_scale * nn.Dense(1, name="out")(x)[:, 0]

  @nn.nowrap
  def init_params(self, key: Array, n: int = 1) -> PyTree:
    """Fresh net parameters (they do not depend on ``n``)."""
    return self.init(key, self.initial_carry(n), jnp.zeros((n,)))["params"]


class LearnedOptimizerState(NamedTuple):
  """Per-coordinate recurrent state: one carry per layer, rows ``(n_params, hidden)``."""

  carries: tuple


def lstm_optimizer(net: LSTMOptimizerNet, net_params: PyTree) -> optax.GradientTransformation:
  """The learned optimizer as an Optax transformation (updates are added to the parameters)."""

  def init_fn(params: PyTree) -> LearnedOptimizerState:
    return LearnedOptimizerState(net.initial_carry(ravel_pytree(params)[0].shape[0]))

  def update_fn(updates: PyTree, state: LearnedOptimizerState, params: Optional[PyTree] = None):
    del params
    flat, unravel = ravel_pytree(updates)
    carries, step = net.apply({"params": net_params}, state.carries, flat)
    return unravel(step.astype(flat.dtype)), LearnedOptimizerState(carries)

  return optax.GradientTransformation(init_fn, update_fn)


def optimize(optimizer: optax.GradientTransformation, params: PyTree, loss_fn: Callable[[PyTree], Array],
             steps: int) -> tuple[PyTree, Array]:
  """``steps`` updates of any Optax ``optimizer`` on ``loss_fn``; returns
  ``(params, losses (steps + 1,))``, the losses before each update and at the end."""

  def step(carry, _):
    p, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = optimizer.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), loss

  (params, _), trajectory = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
  return params, jnp.concatenate([trajectory, loss_fn(params)[None]])


@dataclasses.dataclass(frozen=True)
class LearnedOptimizerConfig:
  """What a learned optimizer is meta-trained on (a ``jit`` static argument).

  Attributes:
    net: the :class:`LSTMOptimizerNet`.
    apply_fn: the optimizee, ``(params, x) -> predictions``.
    init_fn: ``key -> params``, the distribution of optimizee starting points.
    loss_fn: ``(predictions, targets) -> scalar``.
    horizon: optimizee steps per problem.
    truncation: steps per truncated-BPTT segment (divides ``horizon``).
    optimizer: the Optax optimizer of the net's parameters.
    first_order: feed optimizee gradients without second derivatives.
  """

  net: LSTMOptimizerNet
  apply_fn: Callable[[PyTree, Array], Array]
  init_fn: Callable[[Array], PyTree]
  loss_fn: Callable[[Array, Array], Array] = losses.mse
  horizon: int = 100
  truncation: int = 20
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  first_order: bool = True

  def __post_init__(self):
    for name in ("horizon", "truncation"):
      check_positive_int(getattr(self, name), f"LearnedOptimizerConfig: {name}")
    if self.horizon % self.truncation:
      raise ValueError(f"LearnedOptimizerConfig: truncation {self.truncation} must divide horizon {self.horizon}")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError("LearnedOptimizerConfig: optimizer must be an optax.GradientTransformation")


def _support_loss(config: LearnedOptimizerConfig, params: PyTree, task: Task) -> Array:
  return config.loss_fn(config.apply_fn(params, task.x_support), task.y_support)


def _unroll(config: LearnedOptimizerConfig, net_params: PyTree, params: PyTree, state: LearnedOptimizerState,
            task: Task, steps: int) -> tuple[Array, tuple]:
  """``steps`` learned-optimizer updates on one task; ``(mean loss after each, (params, state))``."""
  transform = lstm_optimizer(config.net, net_params)

  def step(carry, _):
    p, s = carry
    grads = jax.grad(_support_loss, argnums=1)(config, p, task)
    if config.first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, s = transform.update(grads, s, p)
    p = optax.apply_updates(p, updates)
    return (p, s), _support_loss(config, p, task)

  carry, trajectory = jax.lax.scan(step, (params, state), None, length=steps)
  return trajectory.mean(), carry


def _starts(config: LearnedOptimizerConfig, key: Array, n: int) -> tuple[PyTree, LearnedOptimizerState]:
  """Fresh optimizee parameters and optimizer states for ``n`` problems."""
  params = jax.vmap(config.init_fn)(jax.random.split(key, n))
  state = jax.vmap(lstm_optimizer(config.net, None).init)(params)
  return params, state


@functools.partial(jax.jit, static_argnames=("config",))
def meta_step(state: MetaState, task_batch: Task, *, config: LearnedOptimizerConfig) -> tuple[MetaState, dict]:
  """Meta-trains on one batch of problems: ``horizon / truncation`` net updates.

  Optimizee starting points come from ``init_fn`` with keys folded from
  ``state.key``. Returns ``(state, metrics)``: ``loss`` (mean final support
  loss) and ``meta_loss`` (mean over segments of the truncated objective).
  """
  check_task(task_batch, batched=True)
  params, opt_state = _starts(config, jax.random.fold_in(state.key, 1), num_tasks(task_batch))

  def segment(carry, _):
    meta_params, outer_state, params, opt_state = carry

    def objective(mp):
      losses_, finals = jax.vmap(lambda p, s, t: _unroll(config, mp["params"], p, s, t, config.truncation))(
          params, opt_state, task_batch)
      return losses_.mean(), finals

    (meta_loss, (params, opt_state)), grads = jax.value_and_grad(objective, has_aux=True)(meta_params)
    updates, outer_state = config.optimizer.update(grads, outer_state, meta_params)
    meta_params = optax.apply_updates(meta_params, updates)
    return (meta_params, outer_state, *jax.lax.stop_gradient((params, opt_state))), meta_loss

  (meta_params, outer_state, params, _), meta_losses = jax.lax.scan(
      segment, (state.meta_params, state.opt_state, params, opt_state), None,
      length=config.horizon // config.truncation)
  final = jax.vmap(lambda p, t: _support_loss(config, p, t))(params, task_batch)
  return (MetaState(meta_params, outer_state, state.step + 1, state.key),
          {"loss": final.mean(), "meta_loss": meta_losses.mean()})


@functools.partial(jax.jit, static_argnames=("config", "inner_steps"))
def evaluate(state: MetaState, task_batch: Task, *, config: LearnedOptimizerConfig,
             inner_steps: Optional[int] = None, key: Optional[Array] = None) -> dict:
  """Per-task query losses before and after ``inner_steps`` (default ``horizon``)
  learned-optimizer steps on the support set, from ``init_fn`` starting points
  (``key``, default ``PRNGKey(0)``): ``{"loss", "loss_before", "support_loss"}``, each ``(tasks,)``."""
  check_task(task_batch, batched=True)
  steps = inner_steps or config.horizon
  key = jax.random.PRNGKey(0) if key is None else key
  params, opt_state = _starts(config, key, num_tasks(task_batch))
  query = lambda p, t: config.loss_fn(config.apply_fn(p, t.x_query), t.y_query)

  def one(p, s, task):
    _, (final, _) = _unroll(config, state.meta_params["params"], p, s, task, steps)
    return {"loss": query(final, task), "loss_before": query(p, task),
            "support_loss": _support_loss(config, final, task)}

  return jax.vmap(one)(params, opt_state, task_batch)
