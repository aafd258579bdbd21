"""The inner loop: gradient-descent adaptation of parameters to a support set.

``adapt`` is one pure function for the whole gradient-based family:

* second-order by default — gradients of anything computed from the adapted
  parameters flow back through every inner update (MAML);
* ``first_order=True`` stops the gradient of the inner gradients on the same
  code path (FOMAML, and the inner loop of Reptile);
* the learning rate is a scalar, a per-parameter pytree (Meta-SGD) or, with
  ``per_step_lr=True``, either of those with a leading ``steps`` axis (MAML++);
* ``mask`` picks which leaves adapt (ANIL adapts only the head); frozen leaves
  are not differentiated in the inner loop at all;
* ``per_step`` picks frozen leaves held once per step (MAML++'s per-step BatchNorm
  weights and statistics): step ``t`` sees copy ``t``;
* ``optimizer`` swaps gradient descent for any Optax transformation, whose
  state is carried through the loop (and differentiated through): learned
  optimizers (Andrychowicz et al. 2016; the Meta-LSTM of Ravi & Larochelle 2017)
  run their inner loop here too;
* ``batches`` gives each step a mini-batch of the support set (Reptile's inner
  loop); :func:`interleaved_batches` makes class-balanced ones;
* the steps run under ``jax.lax.scan`` (trace size independent of ``steps``),
  optionally unrolled, and optionally rematerialised with ``jax.checkpoint`` so
  that second-order memory does not hold every step's activations.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metajax.core.tree import combine, partition
from metajax.core.validate import check_positive_int

PyTree = Any
Array = jax.Array


class AdaptInfo(NamedTuple):
  """Per-step diagnostics of :func:`adapt`.

  Attributes:
    support_loss: ``(steps,)`` support loss *before* each inner update.
    trace: ``trace_fn`` of the parameters *after* each update, stacked on a
      leading ``steps`` axis; ``None`` when no ``trace_fn`` was given.
    opt_state: the inner ``optimizer``'s state after the last step (``None``
      without an optimizer); pass it back as ``opt_state`` to continue.
    aux: with ``has_aux``, the auxiliary output of ``loss_fn`` at every step,
      stacked on a leading ``steps`` axis (``None`` otherwise).
  """

  support_loss: Array
  trace: Optional[PyTree]
  opt_state: Optional[PyTree] = None
  aux: Optional[PyTree] = None


def at_step(tree: PyTree, step: Array | int) -> PyTree:
  """Copy ``step`` of every leaf of a per-step ``tree`` (leading axis: steps), the last copy
  for steps beyond it (so a model trained with n steps evaluates with more)."""
  return jax.tree.map(lambda a: a[jnp.minimum(step, a.shape[0] - 1)], tree)


def interleaved_batches(labels: Array, batch_size: int, steps: int) -> Array:
  """``(steps, batch_size)`` support indices for :func:`adapt`'s ``batches``: consecutive
  mini-batches, cycling, of the support in an order that interleaves the classes.

  With integer ``labels (n,)`` the order takes every class's first example, then every
  class's second, and so on (so a batch of ``k·ways`` examples holds ``k`` of each class
  of a balanced support set); any other ``labels (n, ...)`` (regression targets) keep
  their order. Deterministic: Reptile's inner loop (Nichol et al. 2018) shuffles instead.
  """
  check_positive_int(batch_size, "interleaved_batches: `batch_size`")
  check_positive_int(steps, "interleaved_batches: `steps`")
  n = labels.shape[0]
  if batch_size > n:
    raise ValueError(f"inner mini-batches of {batch_size} exceed the {n} support examples")
  order = jnp.arange(n)
  if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    earlier_same = jnp.tril(labels[:, None] == labels[None, :], -1).sum(axis=1)   # rank within its class
    order = jnp.lexsort((labels, earlier_same))
  return order[(jnp.arange(steps)[:, None] * batch_size + jnp.arange(batch_size)) % n]


def _rates(lr: PyTree, params: PyTree) -> PyTree:
  """One learning rate per parameter leaf: a single rate broadcast, else ``lr`` itself
  (checked to have the structure of ``params``)."""
  if jax.tree.structure(lr).num_nodes == 1 and len(jax.tree.leaves(lr)) == 1:
    return jax.tree.map(lambda _: jnp.asarray(lr), params)
  if jax.tree.structure(lr) != jax.tree.structure(params):
    raise ValueError(
        "adapt: `lr` must be a scalar or a pytree with the structure of `params`; "
        f"got structure {jax.tree.structure(lr)} for params {jax.tree.structure(params)}")
  return lr


def adapt(
    params: PyTree,
    support: PyTree,
    loss_fn: Callable[[PyTree, PyTree], Array],
    *,
    steps: int,
    lr: PyTree,
    per_step_lr: bool = False,
    first_order: bool = False,
    mask: Optional[PyTree] = None,
    remat: bool = False,
    unroll: bool = False,
    trace_fn: Optional[Callable[[PyTree], PyTree]] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    opt_state: Optional[PyTree] = None,
    per_step: Optional[PyTree] = None,
    has_aux: bool = False,
    batches: Optional[Array] = None,
) -> tuple[PyTree, AdaptInfo]:
  """Adapts ``params`` to ``support`` by ``steps`` steps of gradient descent.

  ``θ_{t+1} = θ_t − α_t ⊙ ∇_θ loss_fn(θ_t, support)`` for the leaves selected by
  ``mask``; the others stay as they are.

  Args:
    params: the initial (meta-learned) parameters, any pytree of arrays.
    support: the data ``loss_fn`` is evaluated on, any pytree (e.g. ``(x, y)``).
    loss_fn: ``(params, support) -> scalar`` loss (``(loss, aux)`` with ``has_aux``).
    steps: number of inner updates, a positive Python int.
    lr: a scalar; or a pytree shaped like ``params`` whose leaves broadcast
      against the parameter leaves (per-parameter rates, Meta-SGD). With
      ``per_step_lr=True`` each of these carries an extra leading axis of length
      ``steps`` (per-step rates, MAML++).
    per_step_lr: whether ``lr`` has a leading ``steps`` axis.
    first_order: stop gradients through the inner gradients (first-order MAML).
      The adapted parameters still depend on ``params`` (identity Jacobian) and
      on ``lr``.
    mask: optional pytree of Python bools with the structure of ``params``;
      ``True`` leaves adapt (:func:`metajax.core.tree.partition`). ``None``
      adapts every leaf. Frozen leaves are not differentiated in the inner loop.
    remat: wrap each inner step in ``jax.checkpoint``: the backward pass keeps
      only the parameters between steps and recomputes the rest.
    unroll: unroll the inner loop instead of running it as a loop (faster on
      some backends, larger programs).
    trace_fn: optional ``params -> pytree`` recorded after every step (e.g. the
      query loss, for MAML++'s multi-step loss).
    optimizer: optional Optax transformation replacing plain gradient descent
      (a differentiable inner optimizer: momentum, Adam, a learned optimizer). It
      sees the adapting part of ``params`` (frozen leaves are ``None``). An
      ``optax.GradientTransformationExtraArgs`` also receives ``value=`` the
      support loss. ``lr`` must then stay 1.0 (the transformation sets the step size).
    opt_state: the optimizer's state to start from (default: ``optimizer.init``
      of the adapting parameters), e.g. ``AdaptInfo.opt_state`` of a previous call.
    per_step: optional pytree of Python bools with the structure of ``params``;
      ``True`` leaves do not adapt and carry a leading per-step axis: step ``t``'s
      loss and ``trace_fn`` after its update see copy ``t``, and the returned
      parameters copy ``steps - 1`` (:func:`at_step`: the last copy beyond the
      axis). Antoniou et al. 2019's per-step BatchNorm weights (MAML++), indexed
      as in their code, so every copy reaches the query loss after its step.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` is not differentiated
      through and comes back stacked in ``AdaptInfo.aux``.
    batches: optional ``(steps, batch)`` integer indices: step ``t``'s loss sees the rows
      ``batches[t]`` of every ``support`` leaf (mini-batch inner steps, e.g. from
      :func:`interleaved_batches`); ``None`` gives every step the whole support.

  Returns:
    ``(adapted_params, AdaptInfo)``; with ``per_step``, the per-step leaves of the
    adapted parameters are their copy ``steps - 1``, shaped like one copy.
  """
  check_positive_int(steps, "adapt: `steps`")
  stepped = None
  if per_step is not None:
    if mask is not None and any(jax.tree.leaves(jax.tree.map(lambda m, s: m and s, mask, per_step))):
      raise ValueError("adapt: a `per_step` leaf is also selected by `mask`; per-step leaves do not adapt")
    stepped, _ = partition(params, per_step)
    mask = jax.tree.map(lambda m, s: m and not s, jax.tree.map(lambda _: True, params) if mask is None else mask,
                        per_step)
  trainable, frozen = partition(params, mask)
  if not jax.tree.leaves(trainable):
    raise ValueError("adapt: `mask` selects no parameter to adapt")
  if stepped is not None:
    frozen = jax.tree.map(lambda f, s: None if s else f, frozen, per_step, is_leaf=lambda x: x is None)
  fixed = lambda t: frozen if stepped is None else combine(at_step(stepped, t), frozen)
  if optimizer is None and opt_state is not None:
    raise ValueError("adapt: `opt_state` is the state of an `optimizer`; none was given")
  if optimizer is not None and not (
      jax.tree.structure(lr).num_nodes == 1 and not per_step_lr and float(lr) == 1.0):
    raise ValueError("adapt: with an `optimizer` the step size is the optimizer's; leave `lr` at 1.0")
  rates = partition(_rates(lr, params), mask)[0]
  if per_step_lr:
    for r in jax.tree.leaves(rates):
      if jnp.ndim(r) < 1 or jnp.shape(r)[0] != steps:
        raise ValueError(
            f"adapt: with per_step_lr=True every rate needs a leading axis of "
            f"length steps={steps}; got shape {jnp.shape(r)}")
  if batches is not None and (jnp.ndim(batches) != 2 or jnp.shape(batches)[0] != steps
                              or not jnp.issubdtype(jnp.result_type(batches), jnp.integer)):
    raise ValueError(f"adapt: `batches` must be (steps={steps}, batch) integer indices; got "
                     f"{jnp.result_type(batches)} {jnp.shape(batches)}")
  extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

  def step(carry: tuple, xs: tuple) -> tuple[tuple, tuple]:
    (current, state), (t, step_rates, rows) = carry, xs
    step_rates = step_rates if per_step_lr else rates
    data = support if rows is None else jax.tree.map(lambda a: a[rows], support)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: _with_aux(loss_fn(combine(p, fixed(t)), data), has_aux), has_aux=True)(current)
    if first_order:
      loss_in, grads = jax.lax.stop_gradient((loss, grads))
    else:
      loss_in = loss
    if optimizer is None:
      new = jax.tree.map(lambda p, r, g: p - r * g, current, step_rates, grads)
    else:
      updates, state = (optimizer.update(grads, state, current, value=loss_in) if extra_args
                        else optimizer.update(grads, state, current))
      new = optax.apply_updates(current, updates)
    traced = None if trace_fn is None else trace_fn(combine(new, fixed(t)))
    return (new, state), (loss, traced, jax.lax.stop_gradient(aux))

  if remat:
    step = jax.checkpoint(step)
  if optimizer is not None and opt_state is None:
    opt_state = optimizer.init(trainable)
  (trainable, opt_state), (losses, traced, aux) = jax.lax.scan(
      step, (trainable, opt_state), (jnp.arange(steps), rates if per_step_lr else None, batches), unroll=unroll)
  return combine(trainable, fixed(steps - 1)), AdaptInfo(losses, traced, opt_state, aux if has_aux else None)


def _with_aux(out: Any, has_aux: bool) -> tuple[Array, Any]:
  return out if has_aux else (out, None)
