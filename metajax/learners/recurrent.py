"""Recurrent meta-learners on Flax RNN cells (``"lstm"``, ``"optimized_lstm"``, ``"gru"``).

* :class:`BlackBoxRNN` / :func:`black_box_rnn` — a model-based learner that reads a
  task's support set as a sequence of ``(x_t, y_{t-1})`` pairs (Santoro et al.
  2016; Duan et al. 2016); each query ``x`` is then read, independently of the
  other queries, from the state after the support set, and its target predicted.
  No gradient steps at test time: the recurrence is the learning algorithm.
* :class:`MetaLSTMCell` / :func:`meta_lstm` — the Meta-LSTM of Ravi & Larochelle
  (2017): a coordinate-wise LSTM whose cell state *is* the learner's flattened
  parameters, ``θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t``, with forget and input gates
  computed from the preprocessed gradient and loss, the previous parameters and
  the previous gate. The initial parameters ``θ_0`` are meta-learned too. The
  cell is an Optax transformation (:func:`meta_lstm_optimizer`) run by the one
  inner loop, :func:`metajax.core.adapt`.

Both factories return a :class:`~metajax.core.MetaLearner`
(:func:`metajax.learners.forward.learner`); keyword arguments are
:class:`~metajax.learners.forward.LearnerConfig` fields.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax.core import losses
from metajax.core.adapt import adapt
from metajax.core.protocol import MetaLearner
from metajax.core.tasks import Task
from metajax.core.validate import check_positive_int
from metajax.learners.forward import LearnerConfig, check_ways, learner
from metajax.models.recurrent import CellKind, log_sign, make_cell, zero_carry

__all__ = ["BlackBoxRNN", "MetaLSTMCell", "MetaLSTMState", "black_box_rnn", "meta_lstm", "meta_lstm_optimizer"]

PyTree = Any
Array = jax.Array


class BlackBoxRNN(nn.Module):
  """``(x_support (s, ...), y_support (s, dy), x_query (q, ...)) -> (q, out)``.

  ``y_support`` is already encoded as floats (one-hot labels or regression
  targets). Step ``t`` of the support sequence reads ``[enc(x_t), y_{t-1}]``
  (``y_{-1} = 0``); every query reads ``[enc(x_q), y_{s-1}]`` from the carry
  after the support set, so queries never see each other.

  Attributes:
    out: output width (``ways`` logits, or the regression target's size).
    hidden: cell features.
    cell: ``"lstm"``, ``"optimized_lstm"`` or ``"gru"``.
    encoder: optional Flax module ``(n, ...) -> (n, d)`` applied to inputs
      (e.g. ``Conv4(num_classes=None)``); default: flatten.
  """

  out: int
  hidden: int = 128
  cell: CellKind = "lstm"
  encoder: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, x_support: Array, y_support: Array, x_query: Array) -> Array:
    encode = self.encoder if self.encoder is not None else (lambda x: x.reshape(x.shape[0], -1))
    support, query = encode(x_support), encode(x_query)
    previous = jnp.concatenate([jnp.zeros_like(y_support[:1]), y_support[:-1]], axis=0)
    rnn = nn.RNN(make_cell(self.cell, self.hidden), return_carry=True, name="rnn")
    sequence = jnp.concatenate([support, previous], axis=-1)[None]
    carry, _ = rnn(sequence, initial_carry=zero_carry(self.cell, self.hidden, 1, sequence.dtype))
    q = query.shape[0]
    carry = jax.tree.map(lambda c: jnp.broadcast_to(c, (q,) + c.shape[1:]), carry)
    last = jnp.broadcast_to(y_support[-1], (q, y_support.shape[-1]))
    _, hidden = rnn(jnp.concatenate([query, last], axis=-1)[:, None], initial_carry=carry)
    return nn.Dense(self.out, name="head")(hidden[:, 0])


def _task_defaults(ways: Optional[int], kwargs: dict, who: str) -> None:
  """Regression (``ways=None``: MSE, no metrics) or checked classification (the
  :class:`LearnerConfig` defaults: cross-entropy, accuracy); fills ``kwargs``."""
  if ways is None:
    kwargs.setdefault("loss_fn", losses.mse)
    kwargs.setdefault("metrics_fn", None)
  else:
    check_ways(ways, who)


def black_box_rnn(apply_fn: Callable[..., Array], ways: Optional[int] = None, **kwargs: Any) -> MetaLearner:
  """A black-box RNN learner from ``apply_fn(params, x_support, y_encoded, x_query)``
  (e.g. ``functional(BlackBoxRNN(...), variables)[1]``).

  ``ways=None``: regression (targets fed as floats; MSE loss, no metrics).
  Otherwise classification: support labels fed one-hot, cross-entropy loss,
  accuracy.
  """
  _task_defaults(ways, kwargs, "black_box_rnn")
  if ways is None:
    encode = lambda y: y.reshape(y.shape[0], -1).astype(jnp.float32)
  else:
    encode = lambda y: jax.nn.one_hot(y, ways, dtype=jnp.float32)

  def predict(params, task: Task) -> Array:
    return apply_fn(params, task.x_support, encode(task.y_support), task.x_query)

  return learner(LearnerConfig(predict, name="black_box_rnn", **kwargs))


class MetaLSTMState(NamedTuple):
  """The Meta-LSTM's recurrent state over ``n`` learner coordinates.

  Attributes:
    carry: the first (ordinary) cell's carry, rows ``(n, hidden)``.
    theta: ``(n,)`` the learner's flattened parameters (the meta cell state).
    forget: ``(n,)`` previous forget gate.
    input: ``(n,)`` previous input gate (the per-coordinate learning rate).
  """

  carry: Any
  theta: Array
  forget: Array
  input: Array


def _uniform(low: float, high: float) -> Callable:
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, low, high)


class MetaLSTMCell(nn.Module):
  """One Meta-LSTM update: ``(state, grad (n,), loss ()) -> state``.

  A coordinate-wise ``cell`` reads ``[log_sign(∇), log_sign(L)]`` (4 inputs per
  coordinate) into ``h (n, hidden)``; then
  ``f = σ(w_f·[h, θ, f_prev] + b_f)``, ``i = σ(w_i·[h, θ, i_prev] + b_i)`` and
  ``θ ← f ⊙ θ − i ⊙ ∇``. Biases start near ``f ≈ 1`` (4..6) and ``i ≈ 0.01``
  (-5..-4), so an untrained cell is close to small-step gradient descent.

  Attributes:
    hidden: features of the coordinate-wise cell (20 in the paper).
    cell: ``"lstm"``, ``"optimized_lstm"`` or ``"gru"``.
  """

  hidden: int = 20
  cell: CellKind = "lstm"

  @nn.nowrap
  def initial_state(self, theta: Array) -> MetaLSTMState:
    """The state before the first update, for flattened parameters ``theta (n,)``."""
    n = theta.shape[0]
    return MetaLSTMState(zero_carry(self.cell, self.hidden, n, theta.dtype), theta, jnp.zeros_like(theta),
                         jnp.zeros_like(theta))

  @nn.compact
  def __call__(self, state: MetaLSTMState, grad: Array, loss: Array) -> MetaLSTMState:
    n = grad.shape[0]
    x = jnp.concatenate([log_sign(grad), jnp.broadcast_to(log_sign(loss), (n, 2))], axis=-1)
    carry, h = make_cell(self.cell, self.hidden, name="lstm")(state.carry, x)

    def gate(name: str, previous: Array, bias: tuple[float, float]) -> Array:
      w = self.param(f"w_{name}", _uniform(-0.01, 0.01), (self.hidden + 2,))
      b = self.param(f"b_{name}", _uniform(*bias), ())
      return nn.sigmoid(jnp.concatenate([h, state.theta[:, None], previous[:, None]], -1) @ w + b)

    forget = gate("forget", state.forget, (4.0, 6.0))
    rate = gate("input", state.input, (-5.0, -4.0))
    return MetaLSTMState(carry, forget * state.theta - rate * grad, forget, rate)


def meta_lstm_optimizer(cell: MetaLSTMCell, cell_params: PyTree) -> optax.GradientTransformationExtraArgs:
  """The Meta-LSTM update as an Optax transformation: ``θ + update = f ⊙ θ − i ⊙ ∇``.

  Its state is the :class:`MetaLSTMState` over the flattened parameters; ``update``
  needs ``params`` and the loss as ``value=`` (which :func:`metajax.core.adapt`
  passes to every ``GradientTransformationExtraArgs``).
  """

  def init_fn(params: PyTree) -> MetaLSTMState:
    return cell.initial_state(ravel_pytree(params)[0])

  def update_fn(updates: PyTree, state: MetaLSTMState, params: Optional[PyTree] = None, *,
                value: Optional[Array] = None, **extra_args: Any) -> tuple[PyTree, MetaLSTMState]:
    del extra_args
    if params is None or value is None:
      raise ValueError("meta_lstm_optimizer: update needs the parameters and the loss (value=...)")
    grad, unravel = ravel_pytree(updates)
    theta = ravel_pytree(params)[0]
    new = cell.apply({"params": cell_params}, state._replace(theta=theta), grad, value)
    new = jax.tree.map(lambda n, old: n.astype(old.dtype), new, state)  # the state keeps the parameters' dtype
    return unravel(new.theta - theta), new

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def meta_lstm(apply_fn: Callable[[PyTree, Array], Array], cell: MetaLSTMCell, *, steps: int,
              first_order: bool = True, inner_loss_fn: Callable[[Array, Array], Array] = losses.cross_entropy,
              ways: Optional[int] = None, **kwargs: Any) -> MetaLearner:
  """Ravi & Larochelle's Meta-LSTM over a learner ``apply_fn(params, x) -> predictions``.

  Parameters are ``{"learner": θ_0, "meta_lstm": cell params}`` (initialise the
  latter with ``cell.init(key, cell.initial_state(θ_flat), θ_flat, 0.0)``).
  A task runs ``steps`` Meta-LSTM updates on its whole support set, each from
  the gradient and loss of ``inner_loss_fn``; the query predictions come from
  the final parameters. ``first_order=True`` (the default, the paper's
  simplification) treats the gradients and losses fed to the cell as constants;
  ``False`` differentiates through them too (second order; the log-magnitude
  preprocessing then has large derivatives, so use a smaller outer rate).
  ``ways`` (classification) adds accuracy; ``None`` is regression (MSE).
  """
  check_positive_int(steps, "meta_lstm: steps")
  _task_defaults(ways, kwargs, "meta_lstm")

  def predict(params, task: Task) -> Array:
    support_loss = lambda p, data: inner_loss_fn(apply_fn(p, data[0]), data[1])
    adapted, _ = adapt(params["learner"], (task.x_support, task.y_support), support_loss, steps=steps,
                       lr=1.0, first_order=first_order,
                       optimizer=meta_lstm_optimizer(cell, params["meta_lstm"]))
    return apply_fn(adapted, task.x_query)

  return learner(LearnerConfig(predict, name="meta_lstm", **kwargs))
