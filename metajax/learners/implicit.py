"""iMAML: meta-gradients through the inner optimum by implicit differentiation
(Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit Gradients", 2019).

Each task solves the proximal inner problem

    φ*(θ) = argmin_φ  L_support(φ) + λ/2 ‖φ − θ‖²

approximately, with ``inner_steps`` steps of SGD (or any Optax ``inner_optimizer``)
from ``θ``. At the optimum ``∇L_support(φ*) + λ(φ* − θ) = 0``, so
``dφ*/dθ = (I + H/λ)⁻¹`` with ``H = ∇²L_support(φ*)``, and the task's meta-gradient is

    g = (I + H/λ)⁻¹ ∇L_query(φ*),

solved by ``cg_steps`` of conjugate gradient (:func:`jax.scipy.sparse.linalg.cg`) on
Hessian-vector products. A :func:`jax.custom_vjp` on the inner solve supplies this
VJP, so the inner loop is never differentiated: memory does not grow with
``inner_steps`` (``benchmarks/imaml_memory.py``), unlike second-order MAML's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import jax
import optax
from jax.scipy.sparse.linalg import cg

from metajax.core.meta import MetaState, apply_outer_update, mean_task_grads
from metajax.core.protocol import MetaLearner, bind
from metajax.core.tasks import Task, check_task
from metajax.core.validate import check_finite_number, check_positive_int
from metajax.learners import gradient

__all__ = ["IMAMLConfig", "imaml", "meta_grad", "meta_step", "proximal_solve"]

PyTree = Any
Array = jax.Array
HVPMode = Literal["reverse", "forward"]
HVP_MODES = get_args(HVPMode)


@dataclasses.dataclass(frozen=True)
class IMAMLConfig(gradient.InnerLoopConfig):
  """iMAML: :class:`~metajax.learners.gradient.InnerLoopConfig` plus

  Attributes:
    lam: proximal regularisation strength λ > 0 (the paper uses 0.5–2 on Omniglot).
    cg_steps: conjugate-gradient iterations for the meta-gradient (5 in the paper).
    cg_tol: CG stops early once the residual is below ``cg_tol`` × ‖∇L_query‖ (0: never).
    hvp: Hessian-vector products as ``"reverse"`` (grad of grad: works with every model
      here, including :func:`metajax.models.conv2d`'s custom VJP) or ``"forward"``
      (``jax.jvp`` of ``jax.grad``: cheaper, for models whose ops have forward mode,
      e.g. ``Conv4(conv_impl="xla")``).
  """

  lam: float = 1.0
  cg_steps: int = 5
  cg_tol: float = 1e-10
  hvp: HVPMode = "reverse"

  def __post_init__(self):
    super().__post_init__()
    check_finite_number(self.lam, "IMAMLConfig: lam", positive=True)
    check_positive_int(self.cg_steps, "IMAMLConfig: cg_steps")
    check_finite_number(self.cg_tol, "IMAMLConfig: cg_tol")
    if self.cg_tol < 0:
      raise ValueError(f"IMAMLConfig: cg_tol must be >= 0, got {self.cg_tol}")
    if self.hvp not in HVP_MODES:
      raise ValueError(f"IMAMLConfig: unknown hvp {self.hvp!r}; choose one of {HVP_MODES}")
    if self.adapt_filter is not None:
      raise ValueError("IMAMLConfig: adapt_filter is not supported; the implicit gradient adapts every parameter")

  def inner_loss(self, init_params: PyTree, params: PyTree, support: tuple[Array, Array]) -> Array:
    """``L_support(params) + λ/2 ‖params − init_params‖²``."""
    distance = optax.tree.norm(optax.tree.sub(params, init_params), squared=True)
    return super().inner_loss(init_params, params, support) + 0.5 * self.lam * distance


def _hvp(config: IMAMLConfig, theta: PyTree, task: Task, phi: PyTree, v: PyTree) -> PyTree:
  """``(H + λI) v``: the Hessian of the proximal inner loss at ``phi`` times ``v``."""
  grad = jax.grad(lambda p: config.inner_loss(theta, p, (task.x_support, task.y_support)))
  if config.hvp == "forward":
    return jax.jvp(grad, (phi,), (v,))[1]
  return jax.grad(lambda p: optax.tree.vdot(grad(p), v))(phi)


def proximal_solve(config: IMAMLConfig, theta: PyTree, task: Task, steps: int) -> tuple[PyTree, Array]:
  """``(φ, support_losses (steps,))``: ``theta`` adapted to one task's proximal inner problem.

  Differentiable with the implicit gradient ``(I + H/λ)⁻¹`` (CG, ``config.cg_steps``),
  exact at the inner optimum; the inner steps themselves are not differentiated.
  """
  return _implicit(config, steps)(theta, task)


def _implicit(config: IMAMLConfig, steps: int):
  def forward(theta, task):
    phi, info = gradient.adapt_task(config, {"params": theta}, task, steps, True, False)
    return jax.lax.stop_gradient((phi, info.support_loss))

  @jax.custom_vjp
  def solve(theta, task):
    return forward(theta, task)

  def solve_fwd(theta, task):
    phi, losses = forward(theta, task)
    return (phi, losses), (phi, theta, task)

  def solve_bwd(residuals, cotangents):
    phi, theta, task = residuals
    v = cotangents[0]  # the support losses are reported, not differentiated
    operator = lambda u: optax.tree.scale(1.0 / config.lam, _hvp(config, theta, task, phi, u))  # (I + H/λ) u
    u, _ = cg(operator, v, tol=config.cg_tol, maxiter=config.cg_steps)
    return u, None

  solve.defvjp(solve_fwd, solve_bwd)
  return solve


def task_objective(config: IMAMLConfig, meta_params: PyTree, task: Task) -> tuple[Array, dict]:
  """One task's query loss at its proximal inner solution, and its scalar metrics
  (``loss``, ``support_loss`` before adaptation, ``objective``, ``metrics_fn``'s)."""
  phi, support_losses = proximal_solve(config, meta_params["params"], task, config.inner_steps)
  metrics = gradient.query_metrics(config, phi, task)
  return metrics["loss"], {**metrics, "support_loss": support_losses[0], "objective": metrics["loss"]}


def meta_grad(state: MetaState, task_batch: Task, *, config: IMAMLConfig) -> tuple[PyTree, dict]:
  """The task-batch mean of the implicit meta-gradients (structure of ``state.meta_params``)
  and of the metrics."""
  check_task(task_batch, batched=True)

  def task_grad(task):
    (_, metrics), grads = jax.value_and_grad(task_objective, argnums=1, has_aux=True)(
        config, state.meta_params, task)
    return grads, metrics

  return mean_task_grads(task_grad, task_batch, config.task_strategy)


def meta_step(state: MetaState, task_batch: Task, *, config: IMAMLConfig) -> tuple[MetaState, dict]:
  """One iMAML outer step: :func:`meta_grad`, then the outer optimizer; metrics: :func:`meta_grad`'s
  and ``grad_norm``."""
  grads, metrics = meta_grad(state, task_batch, config=config)
  return apply_outer_update(config.optimizer, state, grads, metrics)


def learner(config: IMAMLConfig) -> MetaLearner:
  """The :class:`~metajax.core.MetaLearner` of an :class:`IMAMLConfig`; evaluation adapts
  with the same proximal inner loop (``eval_inner_steps``)."""
  if not isinstance(config, IMAMLConfig):
    raise TypeError(f"learner: expected an IMAMLConfig, got {type(config).__name__}")
  return bind(config, gradient.init, meta_step, gradient.evaluate, gradient.predict)


def imaml(apply_fn: gradient.ApplyFn, **kwargs: Any) -> MetaLearner:
  """iMAML (Rajeswaran et al. 2019); ``kwargs`` are :class:`IMAMLConfig` fields."""
  return learner(IMAMLConfig(apply_fn, **kwargs))
