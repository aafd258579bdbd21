"""MAML and its family on one code path: second- and first-order MAML, Meta-SGD,
ANIL and MAML++ (per-step learned inner rates, multi-step loss).

Usage::

    import jax, optax, metajax
    from metajax import maml
    model = metajax.models.MLP()
    params, apply_fn = metajax.models.functional(model, model.init(key, x0))
    config = maml.MAMLConfig(apply_fn, optimizer=optax.adam(1e-3), inner_lr=0.01)
    state = maml.init(config, params, key)
    state, metrics = maml.meta_step(state, task_batch, config=config)   # jitted
    grads, metrics = maml.meta_grad(state, task_batch, config=config)   # the meta-gradient only

Variants are settings of :class:`MAMLConfig` (or the helpers below):
``first_order=True`` (FOMAML), ``inner_lr_mode="per_param"`` (Meta-SGD),
``adapt_filter=lambda path: path.startswith("head")`` (ANIL),
``inner_lr_mode="per_step", multi_step_loss=True`` (MAML++).

References: Finn et al. 2017 (MAML), Li et al. 2017 (Meta-SGD), Raghu et al.
2020 (ANIL), Antoniou et al. 2019 (MAML++).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from metajax.core import distributed, losses
from metajax.core.adapt import adapt
from metajax.core.meta import MetaState, TaskStrategy, map_tasks, mean_task_grads, resolve_strategy
from metajax.core.tasks import Task, check_task
from metajax.core.validate import check_positive_int

PyTree = Any
Array = jax.Array
ApplyFn = Callable[[PyTree, Array], Array]
LossFn = Callable[[Array, Array], Array]
MetricsFn = Callable[[Array, Array], dict]
InnerLRMode = Literal["fixed", "scalar", "per_param", "per_step"]
INNER_LR_MODES = ("fixed", "scalar", "per_param", "per_step")


def path_name(path: tuple) -> str:
  """``"head/kernel"`` for the key path of a parameter leaf."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
  """Static configuration of a MAML-family learner (hashable: a ``jit`` static argument).

  Attributes:
    apply_fn: ``(params, x (n, *features)) -> predictions (n, *outputs)``.
    loss_fn: ``(predictions, targets) -> scalar``; default mean squared error.
    metrics_fn: optional ``(predictions, targets) -> {name: scalar}`` reported on
      the query set (e.g. ``{"accuracy": ...}``).
    optimizer: the outer Optax optimizer over all meta-parameters.
    inner_steps: inner gradient steps during meta-training.
    inner_lr: inner learning rate (its initial value when learned).
    inner_lr_mode: ``"fixed"`` (MAML), ``"scalar"`` (one learned rate),
      ``"per_param"`` (a learned rate per parameter entry, Meta-SGD) or
      ``"per_step"`` (a learned rate per parameter tensor and step, MAML++).
    first_order: drop second-order terms (first-order MAML).
    adapt_filter: optional ``path -> bool`` over parameter paths such as
      ``"head/kernel"``; only matching parameters adapt (ANIL). ``None``: all.
    multi_step_loss: MAML++ multi-step loss — the outer objective weighs the
      query loss after every inner step.
    msl_anneal_steps: outer steps over which the multi-step weights anneal from
      uniform to the last step only (MAML++); 0 keeps them uniform.
    eval_inner_steps: inner steps used by :func:`evaluate` (default: ``inner_steps``).
    task_strategy: how the task axis runs (``"auto"``, ``"vmap"``, ``"map"``,
      ``"unroll"``), see :mod:`metajax.core.meta`.
    inner_unroll: unroll the inner loop instead of ``lax.scan``.
    remat: rematerialise each inner step in the backward pass (saves memory in
      second-order MAML at the cost of recomputation).
    inner_optimizer: optional Optax transformation for the inner loop instead
      of SGD with ``inner_lr`` (e.g. a trained
      :func:`metajax.learned_optimizer.lstm_optimizer`); needs
      ``inner_lr_mode="fixed"`` and ignores ``inner_lr``.
  """

  apply_fn: ApplyFn
  loss_fn: LossFn = losses.mse
  metrics_fn: Optional[MetricsFn] = None
  optimizer: optax.GradientTransformation = dataclasses.field(
      default_factory=lambda: optax.adam(1e-3))
  inner_steps: int = 1
  inner_lr: float = 0.01
  inner_lr_mode: InnerLRMode = "fixed"
  first_order: bool = False
  adapt_filter: Optional[Callable[[str], bool]] = None
  multi_step_loss: bool = False
  msl_anneal_steps: int = 0
  eval_inner_steps: Optional[int] = None
  task_strategy: TaskStrategy = "auto"
  inner_unroll: bool = False
  remat: bool = False
  inner_optimizer: Optional[optax.GradientTransformation] = None

  def __post_init__(self):
    if not callable(self.apply_fn):
      raise TypeError("MAMLConfig: apply_fn must be callable (params, x) -> predictions")
    for name in ("inner_steps",) + (("eval_inner_steps",) if self.eval_inner_steps is not None else ()):
      check_positive_int(getattr(self, name), f"MAMLConfig: {name}")
    if not isinstance(self.inner_lr, (int, float)) or not math.isfinite(self.inner_lr) or self.inner_lr < 0:
      raise ValueError(f"MAMLConfig: inner_lr must be a finite number >= 0, got {self.inner_lr!r}")
    if self.inner_lr_mode not in INNER_LR_MODES:
      raise ValueError(
          f"MAMLConfig: unknown inner_lr_mode {self.inner_lr_mode!r}; choose one of {INNER_LR_MODES}")
    if self.msl_anneal_steps < 0:
      raise ValueError(f"MAMLConfig: msl_anneal_steps must be >= 0, got {self.msl_anneal_steps}")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError("MAMLConfig: optimizer must be an optax.GradientTransformation")
    if self.inner_optimizer is not None:
      if not isinstance(self.inner_optimizer, optax.GradientTransformation):
        raise TypeError("MAMLConfig: inner_optimizer must be an optax.GradientTransformation")
      if self.inner_lr_mode != "fixed":
        raise ValueError("MAMLConfig: inner_optimizer sets the inner step; it needs inner_lr_mode='fixed'")
    resolve_strategy(self.task_strategy)


def fomaml(apply_fn: ApplyFn, **kwargs) -> MAMLConfig:
  """First-order MAML (Finn et al. 2017, §5.2)."""
  return MAMLConfig(apply_fn, first_order=True, **kwargs)


def meta_sgd(apply_fn: ApplyFn, **kwargs) -> MAMLConfig:
  """Meta-SGD: a learned inner learning rate for every parameter entry (Li et al. 2017)."""
  return MAMLConfig(apply_fn, inner_lr_mode="per_param", **kwargs)


def anil(apply_fn: ApplyFn, head: str = "head", **kwargs) -> MAMLConfig:
  """ANIL: only parameters under the top-level module ``head`` adapt (Raghu et al. 2020)."""
  return MAMLConfig(apply_fn, adapt_filter=lambda path: path.split("/")[0] == head, **kwargs)


def maml_plus_plus(apply_fn: ApplyFn, **kwargs) -> MAMLConfig:
  """MAML++: per-step per-tensor learned inner rates and the multi-step loss (Antoniou et al. 2019)."""
  kwargs.setdefault("msl_anneal_steps", 0)
  return MAMLConfig(apply_fn, inner_lr_mode="per_step", multi_step_loss=True, **kwargs)


def adapt_mask(config: MAMLConfig, params: PyTree) -> Optional[PyTree]:
  """Pytree of bools, ``True`` where a parameter adapts; ``None`` when all do."""
  if config.adapt_filter is None:
    return None
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(config.adapt_filter(path_name(p))), params)
  if not any(jax.tree.leaves(mask)):
    names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"adapt_filter selects no parameter; parameter paths are {names}")
  return mask


def _initial_inner_lr(config: MAMLConfig, params: PyTree) -> Optional[PyTree]:
  lr = config.inner_lr
  if config.inner_lr_mode == "scalar":
    return jnp.asarray(lr, jnp.result_type(*jax.tree.leaves(params)))
  if config.inner_lr_mode == "per_param":
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), lr, jnp.result_type(p)), params)
  if config.inner_lr_mode == "per_step":
    return jax.tree.map(lambda p: jnp.full((config.inner_steps,), lr, jnp.result_type(p)), params)
  return None


def init(config: MAMLConfig, params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState`: ``params`` (plus learned inner rates), optimizer state, step 0."""
  meta_params = {"params": params}
  inner_lr = _initial_inner_lr(config, params)
  if inner_lr is not None:
    meta_params["inner_lr"] = inner_lr
  return MetaState(meta_params, config.optimizer.init(meta_params), jnp.zeros((), jnp.int32), key)


def _inner_rates(config: MAMLConfig, meta_params: PyTree, steps: int) -> PyTree:
  """The rates handed to :func:`adapt`; per-step rates are padded with their last value."""
  if config.inner_optimizer is not None:
    return 1.0
  if config.inner_lr_mode == "fixed":
    return config.inner_lr
  rates = meta_params["inner_lr"]
  if config.inner_lr_mode == "per_step" and steps != config.inner_steps:
    def resize(r):
      if steps < r.shape[0]:
        return r[:steps]
      return jnp.concatenate([r, jnp.repeat(r[-1:], steps - r.shape[0])])
    rates = jax.tree.map(resize, rates)
  return rates


def msl_weights(config: MAMLConfig, step: Array) -> Array:
  """MAML++ multi-step loss weights ``(inner_steps,)`` at outer step ``step`` (sum to one).

  Uniform at step 0, moving linearly to all weight on the last inner step over
  ``msl_anneal_steps`` outer steps (uniform throughout when that is 0).
  """
  n = config.inner_steps
  uniform = jnp.full((n,), 1.0 / n)
  if config.msl_anneal_steps == 0:
    return uniform
  last = jnp.zeros((n,)).at[-1].set(1.0)
  frac = jnp.clip(step / config.msl_anneal_steps, 0.0, 1.0)
  return (1.0 - frac) * uniform + frac * last


def adapt_task(config: MAMLConfig, meta_params: PyTree, task: Task, steps: int,
               first_order: bool, trace_query: bool) -> tuple[PyTree, Any]:
  """Adapts ``meta_params["params"]`` to one task's support set by ``steps`` inner steps
  (shared by MAML and Reptile); ``trace_query`` records the query loss after every step.
  Returns ``(adapted params, AdaptInfo)``."""
  params = meta_params["params"]

  def support_loss(p, data):
    return config.loss_fn(config.apply_fn(p, data[0]), data[1])

  trace_fn = None
  if trace_query:
    trace_fn = lambda p: config.loss_fn(config.apply_fn(p, task.x_query), task.y_query)
  return adapt(
      params, (task.x_support, task.y_support), support_loss,
      steps=steps, lr=_inner_rates(config, meta_params, steps),
      per_step_lr=config.inner_lr_mode == "per_step", first_order=first_order,
      mask=adapt_mask(config, params), remat=config.remat, unroll=config.inner_unroll,
      trace_fn=trace_fn, optimizer=config.inner_optimizer)


def query_metrics(config: MAMLConfig, params: PyTree, task: Task, suffix: str = "") -> dict:
  """``{"loss" + suffix, *metrics_fn + suffix}`` of ``params`` on one task's query set (scalars)."""
  pred = config.apply_fn(params, task.x_query)
  metrics = {"loss": config.loss_fn(pred, task.y_query)}
  if config.metrics_fn is not None:
    metrics.update(config.metrics_fn(pred, task.y_query))
  return {k + suffix: v for k, v in metrics.items()}


def task_objective(config: MAMLConfig, meta_params: PyTree, task: Task,
                   weights: Optional[Array] = None) -> tuple[Array, dict]:
  """Outer objective of one task: query loss after adapting on its support set.

  With ``multi_step_loss`` the objective is ``Σ_t weights[t] · query_loss(θ_t)``.

  Returns:
    ``(objective, metrics)`` with scalar metrics ``loss`` (query loss after
    adaptation), ``support_loss`` (before adaptation) and those of ``metrics_fn``.
  """
  adapted, info = adapt_task(config, meta_params, task, config.inner_steps,
                              config.first_order, config.multi_step_loss)
  metrics = query_metrics(config, adapted, task)
  metrics["support_loss"] = info.support_loss[0]
  objective = metrics["loss"]
  if config.multi_step_loss:
    w = msl_weights(config, jnp.zeros(())) if weights is None else weights
    objective = jnp.dot(w, info.trace)
  return objective, metrics


@functools.partial(jax.jit, static_argnames=("config",))
def meta_grad(state: MetaState, task_batch: Task, *, config: MAMLConfig) -> tuple[PyTree, dict]:
  """The meta-gradient of one outer step, before any optimizer update.

  Args:
    state: the current :class:`MetaState`.
    task_batch: a :class:`Task` batch, every field ``(tasks, n, ...)``.
    config: the static :class:`MAMLConfig`.

  Returns:
    ``(grads, metrics)``: ``grads`` has the structure of ``state.meta_params`` and is
    the task-batch mean of ``∂ objective / ∂ meta_params`` (:func:`task_objective`);
    metrics are task-batch means of its scalars plus ``objective``.
  """
  check_task(task_batch, batched=True)
  weights = msl_weights(config, state.step) if config.multi_step_loss else None

  def task_grad(task):
    (objective, metrics), grads = jax.value_and_grad(task_objective, argnums=1, has_aux=True)(
        config, state.meta_params, task, weights)
    return grads, {**metrics, "objective": objective}

  return mean_task_grads(task_grad, task_batch, config.task_strategy)


@functools.partial(jax.jit, static_argnames=("config",))
def meta_step(state: MetaState, task_batch: Task, *, config: MAMLConfig) -> tuple[MetaState, dict]:
  """One outer step on a task batch: :func:`meta_grad`, then the outer optimizer.

  Args:
    state: the current :class:`MetaState`.
    task_batch: a :class:`Task` batch, every field ``(tasks, n, ...)``.
    config: the static :class:`MAMLConfig`.

  Returns:
    ``(new_state, metrics)``; metrics are task-batch means of the scalars of
    :func:`task_objective` plus ``objective`` (the differentiated quantity).
  """
  grads, metrics = meta_grad(state, task_batch, config=config)
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.meta_params)
  meta_params = optax.apply_updates(state.meta_params, updates)
  return MetaState(meta_params, opt_state, state.step + 1, state.key), metrics


@functools.partial(jax.jit, static_argnames=("config", "sample_fn", "num_steps", "step_fn", "mesh"))
def train_steps(state: MetaState, data: Optional[PyTree] = None, *, config: Any,
                sample_fn: Callable[..., Task], num_steps: int,
                step_fn: Optional[Callable] = None, mesh: Optional[Mesh] = None) -> tuple[MetaState, dict]:
  """``num_steps`` outer steps in one compiled call, task batches drawn on device.

  Each step splits ``state.key``, draws a task batch with ``sample_fn(subkey)``
  — or ``sample_fn(subkey, data)`` when ``data`` (e.g. an image array) is given;
  pass datasets this way rather than closing over them, so they are not baked
  into the program as constants — and applies ``step_fn`` (default
  :func:`meta_step`) inside a ``lax.scan``: the host dispatches once per
  ``num_steps`` steps. With a ``mesh`` (:func:`metajax.core.distributed.task_mesh`)
  each drawn batch is sharded over its devices along the task axis; pass a
  replicated ``state``.

  Returns:
    ``(state, metrics)`` with every metric stacked to ``(num_steps,)``.
  """
  step_fn = meta_step if step_fn is None else step_fn

  def body(s, _):
    key, sub = jax.random.split(s.key)
    batch = sample_fn(sub) if data is None else sample_fn(sub, data)
    if mesh is not None:
      batch = distributed.constrain_tasks(batch, mesh)
    return step_fn(s._replace(key=key), batch, config=config)

  return jax.lax.scan(body, state, None, length=num_steps)


@functools.partial(jax.jit, static_argnames=("config", "inner_steps"))
def adapt_params(config: MAMLConfig, state: MetaState, task: Task, inner_steps: int) -> PyTree:
  """The parameters after adapting ``state``'s meta-parameters to one task's support set."""
  check_task(task, batched=False)
  return adapt_task(config, state.meta_params, task, inner_steps, True, False)[0]


@functools.partial(jax.jit, static_argnames=("config", "inner_steps"))
def evaluate(state: MetaState, task_batch: Task, *, config: MAMLConfig,
             inner_steps: Optional[int] = None) -> dict:
  """Query metrics of every task before and after adapting on its support set.

  Args:
    state: a :class:`MetaState`.
    task_batch: a :class:`Task` batch.
    config: the static :class:`MAMLConfig`.
    inner_steps: adaptation steps (default ``config.eval_inner_steps`` or
      ``config.inner_steps``).

  Returns:
    ``{name: (tasks,)}`` — ``loss`` and ``metrics_fn`` entries after adaptation,
    the same names with suffix ``_before`` for the unadapted parameters.
  """
  check_task(task_batch, batched=True)
  steps = inner_steps or config.eval_inner_steps or config.inner_steps

  def one(task):
    adapted, _ = adapt_task(config, state.meta_params, task, steps, True, False)
    return {**query_metrics(config, state.meta_params["params"], task, "_before"),
            **query_metrics(config, adapted, task)}

  return map_tasks(one, task_batch, config.task_strategy)
