"""A learned optimizer (Andrychowicz et al. 2016) as an Optax ``GradientTransformation``.

:class:`LSTMOptimizerNet` is a small coordinate-wise LSTM: every parameter
coordinate is a row of the same recurrent net, which reads the preprocessed
gradient (log-magnitude and sign) and outputs that coordinate's update.
:func:`lstm_optimizer` wraps trained net parameters as an
``optax.GradientTransformation`` — pure ``init``/``update``, state a pytree —
that works in ``optax.chain``, as MAML's outer optimizer and, through
``MAMLConfig(inner_optimizer=...)``, as its inner one.

Meta-training (:func:`meta_step`; :func:`learned_optimizer` is the
:class:`~metajax.core.MetaLearner`) draws a batch of problems — tasks plus fresh
optimizee parameters from ``init_fn`` — runs the learned optimizer ``horizon``
steps on each task's support loss with :func:`metajax.core.adapt`, and updates the
net by truncated backpropagation through time: every ``truncation`` steps the
mean loss along the segment is differentiated and the net takes one outer step;
optimizee and LSTM state carry on, with gradients stopped. As in the paper, the
optimizee's gradients are net inputs without second derivatives (``first_order=True``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax.core import losses
from metajax.core.adapt import adapt
from metajax.core.meta import MetaState, TaskStrategy, apply_outer_update, initial_state, map_tasks
from metajax.core.meta import resolve_strategy
from metajax.core.protocol import MetaLearner, bind
from metajax.core.tasks import Task, check_task, num_tasks
from metajax.core.validate import check_positive_int
from metajax.models.recurrent import CellKind, log_sign, make_cell, zero_carry

__all__ = ["LSTMOptimizerNet", "LearnedOptimizerConfig", "LearnedOptimizerState", "evaluate", "init",
           "learned_optimizer", "lstm_optimizer", "meta_step", "optimize", "predict"]

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
  cell: CellKind = "lstm"
  output_scale: float = 0.1

  @nn.nowrap
  def initial_carry(self, n: int, dtype: Any = jnp.float32) -> tuple:
    """Zero carries of every layer for ``n`` coordinates."""
    return tuple(zero_carry(self.cell, self.hidden, n, dtype) for _ in range(self.layers))

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
    flat = ravel_pytree(params)[0]
    return LearnedOptimizerState(net.initial_carry(flat.shape[0], flat.dtype))

  def update_fn(updates: PyTree, state: LearnedOptimizerState, params: Optional[PyTree] = None):
    del params
    flat, unravel = ravel_pytree(updates)
    carries, step = net.apply({"params": net_params}, state.carries, flat)
    carries = jax.tree.map(lambda new, old: new.astype(old.dtype), carries, state.carries)  # the parameters' dtype
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
    task_strategy: how the task axis runs, see :mod:`metajax.core.meta`.
  """

  net: LSTMOptimizerNet
  apply_fn: Callable[[PyTree, Array], Array]
  init_fn: Callable[[Array], PyTree]
  loss_fn: Callable[[Array, Array], Array] = losses.mse
  horizon: int = 100
  truncation: int = 20
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  first_order: bool = True
  task_strategy: TaskStrategy = "auto"

  def __post_init__(self):
    for name in ("horizon", "truncation"):
      check_positive_int(getattr(self, name), f"LearnedOptimizerConfig: {name}")
    if self.horizon % self.truncation:
      raise ValueError(f"LearnedOptimizerConfig: truncation {self.truncation} must divide horizon {self.horizon}")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError("LearnedOptimizerConfig: optimizer must be an optax.GradientTransformation")
    resolve_strategy(self.task_strategy)


def init(config: LearnedOptimizerConfig, net_params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState`: ``meta_params = {"params": net_params}``."""
  return initial_state(config.optimizer, {"params": net_params}, key)


def _loss(config: LearnedOptimizerConfig, params: PyTree, x: Array, y: Array) -> Array:
  return config.loss_fn(config.apply_fn(params, x), y)


def _run(config: LearnedOptimizerConfig, net_params: PyTree, task: Task, params: PyTree,
         opt_state: LearnedOptimizerState, steps: int) -> tuple[Array, tuple]:
  """``steps`` learned-optimizer updates on one task's support loss;
  ``(mean support loss after each, (params, opt_state))``."""
  support_loss = lambda p, data: _loss(config, p, *data)
  params, info = adapt(params, (task.x_support, task.y_support), support_loss, steps=steps, lr=1.0,
                       first_order=config.first_order, optimizer=lstm_optimizer(config.net, net_params),
                       opt_state=opt_state, trace_fn=lambda p: support_loss(p, (task.x_support, task.y_support)))
  return info.trace.mean(), (params, info.opt_state)


def _starts(config: LearnedOptimizerConfig, key: Array, n: int) -> tuple[PyTree, LearnedOptimizerState]:
  """Fresh optimizee parameters and optimizer states for ``n`` problems."""
  params = jax.vmap(config.init_fn)(jax.random.split(key, n))
  state = jax.vmap(lstm_optimizer(config.net, None).init)(params)
  return params, state


def _final_metrics(config: LearnedOptimizerConfig, task: Task, start: PyTree, final: PyTree) -> dict:
  return {"loss": _loss(config, final, task.x_query, task.y_query),
          "loss_before": _loss(config, start, task.x_query, task.y_query),
          "support_loss": _loss(config, start, task.x_support, task.y_support),
          "support_loss_after": _loss(config, final, task.x_support, task.y_support)}


def meta_step(state: MetaState, task_batch: Task, *, config: LearnedOptimizerConfig) -> tuple[MetaState, dict]:
  """Meta-trains on one batch of problems: ``horizon / truncation`` net updates.

  Optimizee starting points come from ``init_fn`` with keys folded from
  ``state.key``. Returns ``(state, metrics)``, task-batch means: ``objective`` and
  ``grad_norm`` (means over the truncated segments, one update each), ``loss`` (query
  after ``horizon`` steps), ``support_loss`` (at the start) and ``support_loss_after``.
  """
  check_task(task_batch, batched=True)
  starts, opt_state = _starts(config, jax.random.fold_in(state.key, 1), num_tasks(task_batch))

  def segment(carry, _):
    meta, params, opt_state = carry

    def objective(meta_params):
      losses_, finals = map_tasks(
          lambda t, p, s: _run(config, meta_params["params"], t, p, s, config.truncation),
          task_batch, config.task_strategy, params, opt_state)
      return losses_.mean(), finals

    (value, finals), grads = jax.value_and_grad(objective, has_aux=True)(meta.meta_params)
    meta, outer = apply_outer_update(config.optimizer, meta, grads, {"objective": value})
    return (meta, *jax.lax.stop_gradient(finals)), outer

  (new, finals, _), outer = jax.lax.scan(segment, (state, starts, opt_state), None,
                                         length=config.horizon // config.truncation)
  metrics = map_tasks(lambda t, s, f: _final_metrics(config, t, s, f), task_batch, config.task_strategy,
                      starts, finals)
  metrics = {k: v.mean() for k, v in metrics.items() if k != "loss_before"}
  return new._replace(step=state.step + 1), {**metrics, **{k: v.mean() for k, v in outer.items()}}


def _eval_starts(config: LearnedOptimizerConfig, n: int, key: Optional[Array]):
  return _starts(config, jax.random.PRNGKey(0) if key is None else key, n)


def evaluate(state: MetaState, task_batch: Task, inner_steps: Optional[int] = None, *,
             config: LearnedOptimizerConfig, key: Optional[Array] = None) -> dict:
  """Per-task ``(tasks,)`` ``loss``/``loss_before`` (query) and ``support_loss``/
  ``support_loss_after`` around ``inner_steps`` (default ``horizon``) learned-optimizer
  steps on the support set, from ``init_fn`` starting points (``key``, default ``PRNGKey(0)``)."""
  check_task(task_batch, batched=True)
  if inner_steps is not None:
    check_positive_int(inner_steps, "inner_steps")
  steps = inner_steps or config.horizon
  starts, opt_state = _eval_starts(config, num_tasks(task_batch), key)

  def one(task, start, s):
    _, (final, _) = _run(config, state.meta_params["params"], task, start, s, steps)
    return _final_metrics(config, task, start, final)

  return map_tasks(one, task_batch, config.task_strategy, starts, opt_state)


def predict(state: MetaState, task: Task, inner_steps: Optional[int] = None, *,
            config: LearnedOptimizerConfig, key: Optional[Array] = None) -> Array:
  """Query predictions of one task after ``inner_steps`` (default ``horizon``; 0: none)
  learned-optimizer steps from an ``init_fn`` starting point (``key``, default ``PRNGKey(0)``)."""
  check_task(task, batched=False)
  starts, opt_state = _eval_starts(config, 1, key)
  start, s = jax.tree.map(lambda x: x[0], (starts, opt_state))
  if inner_steps != 0:
    start = _run(config, state.meta_params["params"], task, start, s, inner_steps or config.horizon)[1][0]
  return config.apply_fn(start, task.x_query)


def learned_optimizer(net: LSTMOptimizerNet, apply_fn: Callable[[PyTree, Array], Array],
                      init_fn: Callable[[Array], PyTree], **kwargs: Any) -> MetaLearner:
  """The learned LSTM optimizer's meta-training as a :class:`~metajax.core.MetaLearner`
  (``init(key, net_params)``); ``kwargs`` are :class:`LearnedOptimizerConfig` fields."""
  return bind(LearnedOptimizerConfig(net, apply_fn, init_fn, **kwargs), init, meta_step, evaluate, predict)
