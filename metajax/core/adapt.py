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
* ``optimizer`` swaps gradient descent for any Optax transformation, whose
  state is carried through the loop (and differentiated through);
* the steps run under ``jax.lax.scan`` (trace size independent of ``steps``),
  optionally unrolled, and optionally rematerialised with ``jax.checkpoint`` so
  that second-order memory does not hold every step's activations.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metajax.core.validate import check_positive_int

PyTree = Any
Array = jax.Array


class AdaptInfo(NamedTuple):
  """Per-step diagnostics of :func:`adapt`.

  Attributes:
    support_loss: ``(steps,)`` support loss *before* each inner update.
    trace: ``trace_fn`` of the parameters *after* each update, stacked on a
      leading ``steps`` axis; ``None`` when no ``trace_fn`` was given.
  """

  support_loss: Array
  trace: Optional[PyTree]


def _is_single_rate(lr: PyTree) -> bool:
  leaves = jax.tree.leaves(lr)
  return len(leaves) == 1 and jax.tree.structure(lr).num_nodes == 1


def _rate_leaves(lr: PyTree, treedef: jax.tree_util.PyTreeDef, n: int) -> list:
  """One learning rate per parameter leaf: broadcast a single rate, else match the tree."""
  if _is_single_rate(lr):
    return [jnp.asarray(lr)] * n
  try:
    return treedef.flatten_up_to(lr)
  except (ValueError, TypeError) as err:
    raise ValueError(
        "adapt: `lr` must be a scalar or a pytree with the structure of `params`; "
        f"got structure {jax.tree.structure(lr)} for params {treedef}") from err


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
) -> tuple[PyTree, AdaptInfo]:
  """Adapts ``params`` to ``support`` by ``steps`` steps of gradient descent.

  ``θ_{t+1} = θ_t − α_t ⊙ ∇_θ loss_fn(θ_t, support)`` for the leaves selected by
  ``mask``; the others stay as they are.

  Args:
    params: the initial (meta-learned) parameters, any pytree of arrays.
    support: the data ``loss_fn`` is evaluated on, any pytree (e.g. ``(x, y)``).
    loss_fn: ``(params, support) -> scalar`` loss.
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
      ``True`` leaves adapt. ``None`` adapts every leaf.
    remat: wrap each inner step in ``jax.checkpoint``: the backward pass keeps
      only the parameters between steps and recomputes the rest.
    unroll: unroll the inner loop instead of running it as a loop (faster on
      some backends, larger programs).
    trace_fn: optional ``params -> pytree`` recorded after every step (e.g. the
      query loss, for MAML++'s multi-step loss).
    optimizer: optional Optax transformation replacing plain gradient descent
      (a differentiable inner optimizer: momentum, Adam, a learned optimizer);
      its state starts fresh per call and is carried through the loop. ``lr``
      must then be 1.0 (the transformation sets the step size).

  Returns:
    ``(adapted_params, AdaptInfo)``.
  """
  check_positive_int(steps, "adapt: `steps`")
  leaves, treedef = jax.tree.flatten(params)
  if mask is None:
    chosen = [True] * len(leaves)
  else:
    try:
      chosen = [bool(m) for m in treedef.flatten_up_to(mask)]
    except (ValueError, TypeError) as err:
      raise ValueError(
          f"adapt: `mask` must have the structure of `params` ({treedef})") from err
  if not any(chosen):
    raise ValueError("adapt: `mask` selects no parameter to adapt")
  if optimizer is not None and not (_is_single_rate(lr) and not per_step_lr and float(lr) == 1.0):
    raise ValueError("adapt: with an `optimizer` the step size is the optimizer's; leave `lr` at 1.0")
  rates = _rate_leaves(lr, treedef, len(leaves))
  idx = [i for i, c in enumerate(chosen) if c]
  rates = [rates[i] for i in idx]
  if per_step_lr:
    for r in rates:
      if jnp.ndim(r) < 1 or jnp.shape(r)[0] != steps:
        raise ValueError(
            f"adapt: with per_step_lr=True every rate needs a leading axis of "
            f"length steps={steps}; got shape {jnp.shape(r)}")

  def merge(trainable: list) -> PyTree:
    full = list(leaves)
    for i, leaf in zip(idx, trainable):
      full[i] = leaf
    return jax.tree.unflatten(treedef, full)

  def inner_loss(trainable: list) -> Array:
    return loss_fn(merge(trainable), support)

  def step(carry: tuple, step_rates: list) -> tuple[tuple, tuple]:
    trainable, opt_state = carry
    loss, grads = jax.value_and_grad(inner_loss)(trainable)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    if optimizer is None:
      new = [p - r * g for p, r, g in zip(trainable, step_rates, grads)]
    else:
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      new = optax.apply_updates(trainable, updates)
    traced = None if trace_fn is None else trace_fn(merge(new))
    return (new, opt_state), (loss, traced)

  if remat:
    step = jax.checkpoint(step)
  trainable = [leaves[i] for i in idx]
  carry = (trainable, None if optimizer is None else optimizer.init(trainable))
  if per_step_lr:
    carry, (losses, traced) = jax.lax.scan(step, carry, rates, unroll=unroll)
  else:
    carry, (losses, traced) = jax.lax.scan(
        lambda c, _: step(c, rates), carry, None, length=steps, unroll=unroll)
  return merge(carry[0]), AdaptInfo(support_loss=losses, trace=traced)
