"""The gradient-based family on one code path: MAML (second and first order), Meta-SGD,
ANIL, MAML++ (per-step learned inner rates, multi-step loss,
per-step BatchNorm) and Reptile.

Each task adapts the meta-learned initialisation to its support set with
:func:`metajax.core.adapt`; the algorithms differ in the outer "gradient":

* MAML: ``∂ query_loss(adapt(θ)) / ∂θ``, through the inner loop (``first_order``
  drops its second-order terms);
* Reptile: ``θ − adapt(θ)``, a first-order inner loop and no query pass.

Configuration is a frozen dataclass (:class:`MAMLConfig`, :class:`ReptileConfig`);
:func:`maml`, :func:`fomaml`, :func:`meta_sgd`, :func:`anil`, :func:`maml_plus_plus`
and :func:`reptile` build it and return a :class:`~metajax.core.MetaLearner`. The
functions taking ``config=`` are the same algorithms for research code
(``metajax.maml`` jits them).

References: Finn et al. 2017 (MAML), Li et al. 2017 (Meta-SGD), Raghu et al.
2020 (ANIL), Antoniou et al. 2019 (MAML++), Nichol et al. 2018 (Reptile).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Optional, get_args

import jax
import jax.numpy as jnp
import optax

from metajax.core import losses
from metajax.core.adapt import AdaptInfo, adapt, at_step, interleaved_batches
from metajax.core.meta import MetaState, TaskStrategy, apply_outer_update, initial_state, map_tasks
from metajax.core.meta import mean_task_grads
from metajax.core.meta import resolve_strategy
from metajax.core.protocol import MetaLearner, bind
from metajax.core.tasks import Task, check_task, num_tasks
from metajax.core.tree import combine, mask_from_filter, partition, path_name
from metajax.core.validate import check_finite_number, check_nonnegative_int, check_positive_int

PyTree = Any
Array = jax.Array
ApplyFn = Callable[[PyTree, Array], Array]
LossFn = Callable[[Array, Array], Array]
MetricsFn = Callable[[Array, Array], dict]
InnerLRMode = Literal["fixed", "scalar", "per_param", "per_step"]
INNER_LR_MODES = get_args(InnerLRMode)


@dataclasses.dataclass(frozen=True)
class InnerLoopConfig:
  """What every learner of this family configures (hashable: a ``jit`` static argument).

  Attributes:
    apply_fn: ``(params, x (n, *features)) -> predictions (n, *outputs)``.
    loss_fn: ``(predictions, targets) -> scalar``; default mean squared error.
    metrics_fn: optional ``(predictions, targets) -> {name: scalar}`` reported on
      the query set (e.g. ``{"accuracy": ...}``).
    optimizer: the outer Optax optimizer over all meta-parameters.
    inner_steps: inner gradient steps during meta-training.
    inner_lr: inner learning rate (its initial value when learned).
    eval_inner_steps: inner steps used by ``evaluate`` (default: ``inner_steps``).
    inner_batch_size: support examples per inner step during meta-training, in
      class-interleaved mini-batches that cycle through the support set
      (:func:`metajax.core.interleaved_batches`; Reptile's inner loop). ``None``: all.
    eval_inner_batch_size: the same for ``evaluate`` and ``predict`` (``None``: all).
    adapt_filter: optional ``path -> bool`` over parameter paths such as
      ``"head/kernel"``; only matching parameters adapt (ANIL). ``None``: all.
    inner_optimizer: optional Optax transformation for the inner loop instead
      of SGD with ``inner_lr`` (Adam for Reptile; a trained
      :func:`metajax.learners.lstm_optimizer`); ``inner_lr`` is then unused.
    task_strategy: how the task axis runs (``"auto"``, ``"vmap"``, ``"map"``,
      ``"unroll"``), see :mod:`metajax.core.meta`.
    inner_unroll: unroll the inner loop instead of ``lax.scan``.
    remat: rematerialise each inner step in the backward pass (saves memory in
      second-order MAML at the cost of recomputation).
  """

  apply_fn: ApplyFn
  loss_fn: LossFn = losses.mse
  metrics_fn: Optional[MetricsFn] = None
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  inner_steps: int = 1
  inner_lr: float = 0.01
  eval_inner_steps: Optional[int] = None
  inner_batch_size: Optional[int] = None
  eval_inner_batch_size: Optional[int] = None
  adapt_filter: Optional[Callable[[str], bool]] = None
  inner_optimizer: Optional[optax.GradientTransformation] = None
  task_strategy: TaskStrategy = "auto"
  inner_unroll: bool = False
  remat: bool = False

  def __post_init__(self):
    who = type(self).__name__
    if not callable(self.apply_fn):
      raise TypeError(f"{who}: apply_fn must be callable (params, x) -> predictions")
    check_positive_int(self.inner_steps, f"{who}: inner_steps")
    for name in ("eval_inner_steps", "inner_batch_size", "eval_inner_batch_size"):
      if getattr(self, name) is not None:
        check_positive_int(getattr(self, name), f"{who}: {name}")
    check_finite_number(self.inner_lr, f"{who}: inner_lr")
    if not isinstance(self.optimizer, optax.GradientTransformation):
      raise TypeError(f"{who}: optimizer must be an optax.GradientTransformation")
    if self.inner_optimizer is not None and not isinstance(self.inner_optimizer, optax.GradientTransformation):
      raise TypeError(f"{who}: inner_optimizer must be an optax.GradientTransformation")
    resolve_strategy(self.task_strategy)

  def initial_inner_lr(self, params: PyTree) -> Optional[PyTree]:
    """Learned inner rates to add to the meta-parameters (``None``: the rate is fixed)."""
    del params
    return None

  def inner_rates(self, meta_params: PyTree, steps: int) -> PyTree:
    """The ``lr`` handed to :func:`~metajax.core.adapt` for ``steps`` inner steps."""
    del meta_params, steps
    return 1.0 if self.inner_optimizer is not None else self.inner_lr

  @property
  def per_step_lr(self) -> bool:
    """Whether :meth:`inner_rates` carry a leading steps axis."""
    return False

  def forward(self, params: PyTree, x: Array) -> tuple[Array, Optional[PyTree]]:
    """Predictions ``(n, *outputs)`` of one step's parameters, and the batch statistics of the
    pass (``None`` unless MAML++ running statistics are kept)."""
    return self.apply_fn(params, x), None

  def per_step_mask(self, params: PyTree) -> Optional[PyTree]:
    """Which parameter leaves are held once per inner step (``None``: none)."""
    del params
    return None

  def initial_stats(self) -> Optional[PyTree]:
    """One inner step's initial running statistics (``None``: none are kept)."""
    return None

  def inner_loss(self, init_params: PyTree, params: PyTree, support: tuple[Array, Array]) -> Array:
    """The loss the inner loop minimises, starting from ``init_params``: the support loss
    (iMAML adds a proximal term around ``init_params``)."""
    del init_params
    return self.loss_fn(self.forward(params, support[0])[0], support[1])


@dataclasses.dataclass(frozen=True)
class RunningStats:
  """MAML++ per-step BatchNorm running statistics (Antoniou et al. 2019, §4 "BNRS").

  Meta-training normalises with each batch's statistics, as MAML does, and keeps an
  exponential moving average of each inner step's support-set statistics (updated once
  per meta-step from the task-batch mean; biased variance). ``evaluate`` and ``predict``
  normalise step ``t`` (and the query pass after it) with average ``t``, so a query
  example's prediction no longer depends on the other query examples.

  This is the paper's description, not what the authors' code runs: their
  ``F.batch_norm(..., training=True)`` collects the averages but always normalises with
  batch statistics. MAML adapts poorly with them (Omniglot: chance accuracy,
  ``benchmarks/RESULTS.md``), since its inner loop is trained on per-task statistics;
  the registry's ``maml++`` does not use them.

  The config's ``apply_fn`` is then ``(params, x, stats) -> (predictions, batch
  statistics)``, normalising with the batch's own statistics when ``stats`` is ``None``;
  :func:`metajax.models.functional_with_stats` makes it from a Flax module.

  Attributes:
    initial: ``() -> stats``, one step's statistics before training (e.g. mean 0, variance 1).
    momentum: weight of the old average in every update, ``[0, 1)`` (Flax's convention:
      PyTorch's ``momentum=0.1`` is 0.9 here).
  """

  initial: Callable[[], PyTree]
  momentum: float = 0.9

  def __post_init__(self):
    if not callable(self.initial):
      raise TypeError("RunningStats: initial must be callable () -> statistics")
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"RunningStats: momentum must be in [0, 1), got {self.momentum}")


def is_batch_norm(path: str) -> bool:
  """Whether a parameter path is a BatchNorm scale or bias (a Flax ``BatchNorm`` module, or
  one named ``norm…``/``…_norm``, as in :class:`~metajax.models.Conv4` and ResNet-12)."""
  return any(p.startswith(("norm", "BatchNorm")) or p.endswith("_norm") for p in path.split("/")[:-1])


@dataclasses.dataclass(frozen=True)
class MAMLConfig(InnerLoopConfig):
  """A MAML-family learner: :class:`InnerLoopConfig` plus

  Attributes:
    inner_lr_mode: ``"fixed"`` (MAML), ``"scalar"`` (one learned rate),
      ``"per_param"`` (a learned rate per parameter entry, Meta-SGD) or
      ``"per_step"`` (a learned rate per parameter tensor and step, MAML++).
    first_order: drop second-order terms (first-order MAML).
    multi_step_loss: MAML++ multi-step loss: the outer objective weighs the
      query loss after every inner step.
    msl_anneal_steps: outer steps over which the multi-step weights anneal from
      uniform to the last step only (MAML++); 0 keeps them uniform.
    first_order_until: derivative-order annealing (MAML++): outer steps ``< first_order_until``
      use first-order gradients, later ones second order; 0 (default) never switches.
    per_step_filter: optional ``path -> bool``: the parameters held once per inner step,
      meta-learned and not adapted (MAML++'s per-step BatchNorm weights and biases:
      :func:`is_batch_norm`). Step ``t``'s support pass and the query pass after it use
      copy ``t``; evaluating with more steps reuses the last copy.
    running_stats: optional :class:`RunningStats` (MAML++'s per-step BatchNorm running
      statistics), kept in ``meta_params["bn_stats"]`` with a leading ``inner_steps``
      axis; ``apply_fn`` then takes and returns statistics.
  """

  inner_lr_mode: InnerLRMode = "fixed"
  first_order: bool = False
  multi_step_loss: bool = False
  msl_anneal_steps: int = 0
  first_order_until: int = 0
  per_step_filter: Optional[Callable[[str], bool]] = None
  running_stats: Optional[RunningStats] = None

  def __post_init__(self):
    super().__post_init__()
    if self.inner_lr_mode not in INNER_LR_MODES:
      raise ValueError(
          f"MAMLConfig: unknown inner_lr_mode {self.inner_lr_mode!r}; choose one of {INNER_LR_MODES}")
    check_nonnegative_int(self.msl_anneal_steps, "MAMLConfig: msl_anneal_steps")
    check_nonnegative_int(self.first_order_until, "MAMLConfig: first_order_until")
    if self.first_order and self.first_order_until:
      raise ValueError("MAMLConfig: first_order_until anneals to second order; it needs first_order=False")
    if self.inner_optimizer is not None and self.inner_lr_mode != "fixed":
      raise ValueError("MAMLConfig: inner_optimizer sets the inner step; it needs inner_lr_mode='fixed'")
    if self.running_stats is not None and not isinstance(self.running_stats, RunningStats):
      raise TypeError("MAMLConfig: running_stats must be a RunningStats")

  def forward(self, params: PyTree, x: Array) -> tuple[Array, Optional[PyTree]]:
    if self.running_stats is None:
      return super().forward(params, x)
    return self.apply_fn(params["params"], x, params["stats"])

  def per_step_mask(self, params: PyTree) -> Optional[PyTree]:
    return None if self.per_step_filter is None else mask_from_filter(self.per_step_filter, params)

  def initial_stats(self) -> Optional[PyTree]:
    return None if self.running_stats is None else self.running_stats.initial()

  def initial_inner_lr(self, params: PyTree) -> Optional[PyTree]:
    lr = self.inner_lr
    if self.inner_lr_mode == "scalar":
      return jnp.asarray(lr, jnp.result_type(*jax.tree.leaves(params)))
    if self.inner_lr_mode == "per_param":
      return jax.tree.map(lambda p: jnp.full(jnp.shape(p), lr, jnp.result_type(p)), params)
    if self.inner_lr_mode == "per_step":
      return jax.tree.map(lambda p: jnp.full((self.inner_steps,), lr, jnp.result_type(p)), params)
    return None

  @property
  def per_step_lr(self) -> bool:
    return self.inner_lr_mode == "per_step"

  def inner_rates(self, meta_params: PyTree, steps: int) -> PyTree:
    """Learned rates; per-step rates are cut or padded with their last value to ``steps``."""
    if self.inner_lr_mode == "fixed":
      return super().inner_rates(meta_params, steps)
    rates = meta_params["inner_lr"]
    if self.inner_lr_mode == "per_step" and steps != self.inner_steps:
      def resize(r):
        if steps < r.shape[0]:
          return r[:steps]
        return jnp.concatenate([r, jnp.repeat(r[-1:], steps - r.shape[0])])
      rates = jax.tree.map(resize, rates)
    return rates


CarryMode = Literal["mean", "sequential"]
CARRY_MODES = get_args(CarryMode)


def check_carry_mode(carry_mode: str, carry_inner_state: bool, owner: str,
                     names: tuple[str, str] = ("carry_mode", "carry_inner_state=True")) -> None:
  """Raise ``ValueError`` for an unknown ``carry_mode`` or one that needs a carried inner
  state that is off. ``owner`` prefixes the message; ``names``: how the message spells the
  mode option and the setting that turns the carried state on."""
  mode, carry = names
  if carry_mode not in CARRY_MODES:
    raise ValueError(f"{owner}unknown {mode} {carry_mode!r}; choose one of {CARRY_MODES}")
  if carry_mode != "mean" and not carry_inner_state:
    raise ValueError(f"{owner}{mode} {carry_mode!r} says how tasks share a carried inner state; set {carry}")


@dataclasses.dataclass(frozen=True)
class ReptileConfig(InnerLoopConfig):
  """Reptile (Nichol et al. 2018): :class:`InnerLoopConfig` plus

  Attributes:
    carry_inner_state: the ``inner_optimizer``'s state carries over from task to task and
      from step to step, as the TensorFlow Adam of the paper's code does (its moments see
      every task's gradients; a new Adam per task takes sign-like first steps). It is kept
      in ``meta_params["inner_state"]`` (not learned: the outer optimizer never sees it);
      evaluation starts from it and leaves it as it is.
    carry_mode: how a step's tasks share the carried state. ``"mean"``: every task starts
      from the step's state, and the task-batch mean of their final states carries on (the
      tasks stay independent, so ``task_strategy`` applies). ``"sequential"``: the tasks
      adapt one after another, each from the state the previous one left, as the paper's
      code runs them (a scan over the task batch, whatever ``task_strategy``).

  With ``optax.sgd(ε)`` as ``optimizer`` the outer step is exactly ``θ ← θ + ε·mean(φ − θ)``;
  the paper's inner optimizer is Adam with ``β1 = 0``
  (``inner_optimizer=optax.adam(1e-3, b1=0.0), carry_inner_state=True``).
  """

  carry_inner_state: bool = False
  carry_mode: CarryMode = "mean"

  def __post_init__(self):
    super().__post_init__()
    if self.carry_inner_state and self.inner_optimizer is None:
      raise ValueError("ReptileConfig: carry_inner_state carries an inner_optimizer's state; none was given")
    check_carry_mode(self.carry_mode, self.carry_inner_state, "ReptileConfig: ")


def init(config: InnerLoopConfig, params: PyTree, key: Array) -> MetaState:
  """The initial :class:`MetaState`: ``{"params": params}`` (per-step leaves copied
  ``inner_steps`` times), plus ``"inner_lr"`` when learned and ``"bn_stats"`` when
  running statistics are kept; optimizer state, step 0, ``key``."""
  copies = lambda a: jnp.stack([a] * config.inner_steps)
  meta_params = {"params": params}
  inner_lr = config.initial_inner_lr(params)
  if inner_lr is not None:
    meta_params["inner_lr"] = inner_lr
  per_step = config.per_step_mask(params)
  if per_step is not None:
    meta_params["params"] = jax.tree.map(lambda a, s: copies(a) if s else a, params, per_step)
  stats = config.initial_stats()
  if stats is not None:
    meta_params["bn_stats"] = jax.tree.map(copies, stats)
  if isinstance(config, ReptileConfig) and config.carry_inner_state:
    meta_params["inner_state"] = config.inner_optimizer.init(partition(params, _adapt_mask(config, params))[0])
  return initial_state(config.optimizer, meta_params, key)


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


def _model(config: InnerLoopConfig, meta_params: PyTree, steps: int, running: bool) -> dict:
  """:func:`~metajax.core.adapt` arguments that depend on what is adapted: ``params``
  (``meta_params["params"]``, or, where running statistics are kept, ``{"params": …,
  "stats": …}`` with the running averages when ``running``, else ``None``), ``mask``,
  ``per_step`` and ``lr`` (statistics are held per step and never adapt)."""
  params = meta_params["params"]
  mask = _adapt_mask(config, params)
  per_step = config.per_step_mask(params)
  if per_step is not None:
    _check_copies(params, per_step, config.inner_steps)
  lr = config.inner_rates(meta_params, steps)
  if "bn_stats" not in meta_params:
    return dict(params=params, mask=mask, per_step=per_step, lr=lr)
  stats = meta_params["bn_stats"] if running else None
  like = lambda tree, value: jax.tree.map(lambda _: value, tree)
  scalar_lr = len(jax.tree.leaves(lr)) == 1 and jax.tree.structure(lr).num_nodes == 1
  return dict(params={"params": params, "stats": stats},
              mask=None if mask is None else {"params": mask, "stats": like(stats, False)},
              per_step={"params": like(params, False) if per_step is None else per_step, "stats": like(stats, True)},
              lr=lr if scalar_lr else {"params": lr, "stats": like(stats, jnp.zeros((steps,)) if config.per_step_lr else 0.0)})


def _adapt_mask(config: InnerLoopConfig, params: PyTree) -> Optional[PyTree]:
  """Which leaves adapt (``adapt_filter``); ``None``: all."""
  return None if config.adapt_filter is None else mask_from_filter(config.adapt_filter, params)


def _check_copies(params: PyTree, per_step: PyTree, copies: int) -> None:
  """Per-step leaves must hold ``copies`` (``inner_steps``) copies on a leading axis, as
  :func:`init` makes them; parameters without them would silently run with wrong copies."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  bad = [f"{path_name(path)} {jnp.shape(a)}" for (path, a), s in zip(leaves, jax.tree.leaves(per_step))
         if s and (jnp.ndim(a) == 0 or jnp.shape(a)[0] != copies)]
  if bad:
    raise ValueError(f"MAMLConfig: per-step parameters need a leading axis of inner_steps={copies} copies "
                     f"(gradient.init makes it from one copy); these do not: {', '.join(bad)}")


def adapt_task(config: InnerLoopConfig, meta_params: PyTree, task: Task, steps: int,
               first_order: bool, trace_query: bool, running: bool = False,
               training: bool = True) -> tuple[PyTree, AdaptInfo]:
  """``meta_params["params"]`` adapted to one task's support set by ``steps`` inner steps
  (in mini-batches of ``inner_batch_size``, or ``eval_inner_batch_size`` when not
  ``training``); ``trace_query`` records the query loss after every step. Where running
  statistics are kept, ``running`` normalises with them (evaluation); otherwise
  ``AdaptInfo.aux`` holds each step's batch statistics. Returns ``(params, AdaptInfo)``: the
  parameters as :meth:`InnerLoopConfig.forward` takes them, per-step leaves at copy ``steps - 1``."""
  model = _model(config, meta_params, steps, running)
  batch_size = config.inner_batch_size if training else config.eval_inner_batch_size
  if batch_size is not None:
    model["batches"] = interleaved_batches(task.y_support, batch_size, steps)
  if "inner_state" in meta_params:
    model["opt_state"] = meta_params["inner_state"]
  init_params = model.pop("params")
  collect = "bn_stats" in meta_params and not running

  def support_loss(params, support):
    if not collect:
      return config.inner_loss(init_params, params, support)
    pred, stats = config.forward(params, support[0])
    return config.loss_fn(pred, support[1]), stats

  trace_fn = None
  if trace_query:
    trace_fn = lambda p: config.loss_fn(config.forward(p, task.x_query)[0], task.y_query)
  return adapt(
      init_params, (task.x_support, task.y_support), support_loss, steps=steps,
      per_step_lr=config.per_step_lr, first_order=first_order, remat=config.remat, unroll=config.inner_unroll,
      trace_fn=trace_fn, optimizer=config.inner_optimizer, has_aux=collect, **model)


def initial_params(config: InnerLoopConfig, meta_params: PyTree, running: bool = False) -> PyTree:
  """The unadapted parameters as :meth:`InnerLoopConfig.forward` takes them (per-step
  leaves at copy 0)."""
  model = _model(config, meta_params, 1, running)
  if model["per_step"] is None:
    return model["params"]
  stepped, rest = partition(model["params"], model["per_step"])
  return combine(at_step(stepped, 0), rest)


def query_metrics(config: InnerLoopConfig, params: PyTree, task: Task, suffix: str = "") -> dict:
  """``{"loss" + suffix, *metrics_fn + suffix}`` of ``params`` on one task's query set (scalars)."""
  pred = config.forward(params, task.x_query)[0]
  metrics = {"loss": config.loss_fn(pred, task.y_query)}
  if config.metrics_fn is not None:
    metrics.update(config.metrics_fn(pred, task.y_query))
  return {k + suffix: v for k, v in metrics.items()}


def task_objective(config: MAMLConfig, meta_params: PyTree, task: Task,
                   weights: Optional[Array] = None, first_order: Optional[bool] = None) -> tuple[Array, dict]:
  """Outer objective of one task: query loss after adapting on its support set.

  With ``multi_step_loss`` the objective is ``Σ_t weights[t] · query_loss(θ_t)``.
  ``first_order`` overrides ``config.first_order``.

  Returns:
    ``(objective, metrics)`` with scalar metrics ``loss`` (query loss after
    adaptation), ``support_loss`` (before adaptation), those of ``metrics_fn`` and
    ``objective``; with running statistics also ``batch_stats``, the support set's batch
    statistics at every inner step (leading axis ``inner_steps``).
  """
  adapted, info = adapt_task(config, meta_params, task, config.inner_steps,
                              config.first_order if first_order is None else first_order, config.multi_step_loss)
  metrics = query_metrics(config, adapted, task)
  metrics["support_loss"] = info.support_loss[0]
  objective = metrics["loss"]
  if config.multi_step_loss:
    w = msl_weights(config, jnp.zeros(())) if weights is None else weights
    objective = jnp.dot(w, info.trace)
  if info.aux is not None:
    metrics["batch_stats"] = info.aux
  return objective, {**metrics, "objective": objective}


def meta_grad(state: MetaState, task_batch: Task, *, config: MAMLConfig) -> tuple[PyTree, dict]:
  """The meta-gradient of one outer step, before any optimizer update.

  Args:
    state: the current :class:`MetaState`.
    task_batch: a :class:`Task` batch, every field ``(tasks, n, ...)``.
    config: the static :class:`MAMLConfig`.

  Returns:
    ``(grads, metrics)``: ``grads`` has the structure of ``state.meta_params`` and is
    the task-batch mean of ``∂ objective / ∂ meta_params`` (:func:`task_objective`);
    metrics are task-batch means of its scalars (and, with running statistics, of
    ``batch_stats``, which :func:`meta_step` folds into ``meta_params["bn_stats"]``;
    their gradient is zero, so an update of your own must fold them in likewise).
    With ``first_order_until`` the order is chosen by ``state.step`` inside the
    compiled program (both orders are compiled).
  """
  check_task(task_batch, batched=True)
  weights = msl_weights(config, state.step) if config.multi_step_loss else None

  def batch_grad(first_order):
    def task_grad(task):
      (_, metrics), grads = jax.value_and_grad(task_objective, argnums=1, has_aux=True)(
          config, state.meta_params, task, weights, first_order)
      return grads, metrics
    return mean_task_grads(task_grad, task_batch, config.task_strategy)

  if not config.first_order_until:
    return batch_grad(config.first_order)
  return jax.lax.cond(state.step < config.first_order_until, lambda: batch_grad(True), lambda: batch_grad(False))


def meta_step(state: MetaState, task_batch: Task, *, config: MAMLConfig) -> tuple[MetaState, dict]:
  """One outer step on a task batch: :func:`meta_grad`, then the outer optimizer (and, with
  ``running_stats``, the moving average of the step's ``batch_stats``).

  Returns ``(new_state, metrics)``: :func:`meta_grad`'s, less ``batch_stats``, plus ``grad_norm``.
  """
  grads, metrics = meta_grad(state, task_batch, config=config)
  new, metrics = apply_outer_update(config.optimizer, state, grads, metrics)
  if config.running_stats is None:
    return new, metrics
  m, batch = config.running_stats.momentum, metrics.pop("batch_stats")
  stats = jax.tree.map(lambda old, b: m * old + (1.0 - m) * b, state.meta_params["bn_stats"], batch)
  return new._replace(meta_params={**new.meta_params, "bn_stats": stats}), metrics


def reptile_grad(state: MetaState, task_batch: Task, *, config: ReptileConfig) -> tuple[PyTree, dict]:
  """Reptile's outer "gradient" ``mean(θ − φ)`` (``φ``: ``θ`` adapted to a task's support
  set), the gradient of ``objective = ½‖θ − φ‖²`` with ``φ`` held constant; metrics
  ``loss`` (query after adaptation), ``support_loss`` (before), ``objective`` and
  ``metrics_fn``'s, task-batch means (with ``carry_inner_state`` also ``inner_state``, the
  inner-optimizer state to carry on by ``carry_mode``, which :func:`reptile_step` keeps)."""
  check_task(task_batch, batched=True)

  def task_grad(task, inner_state=None):
    meta_params = state.meta_params if inner_state is None else {**state.meta_params, "inner_state": inner_state}
    adapted, info = adapt_task(config, meta_params, task, config.inner_steps, True, False)
    delta = jax.tree.map(lambda t, a: t - a, state.meta_params["params"], jax.lax.stop_gradient(adapted))
    objective = 0.5 * sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(delta))
    metrics = {**query_metrics(config, adapted, task), "support_loss": info.support_loss[0],
               "objective": objective}
    if config.carry_inner_state:
      metrics["inner_state"] = info.opt_state
    return {"params": delta}, metrics

  if config.carry_mode == "sequential":
    return _tasks_in_turn(task_grad, task_batch, state.meta_params["inner_state"])
  grads, metrics = mean_task_grads(task_grad, task_batch, config.task_strategy)
  if config.carry_inner_state:  # the mean of the (equal) integer step counts comes back as floats
    metrics["inner_state"] = jax.tree.map(
        lambda mean, old: jnp.round(mean).astype(old.dtype) if jnp.issubdtype(old.dtype, jnp.integer) else mean,
        metrics["inner_state"], state.meta_params["inner_state"])
  return grads, metrics


def _tasks_in_turn(task_grad: Callable[..., tuple[PyTree, dict]], task_batch: Task,
                   inner_state: PyTree) -> tuple[PyTree, dict]:
  """Task-batch means of ``task_grad(task, inner_state) -> (grads, metrics)`` over the tasks in
  turn, each starting from the ``metrics["inner_state"]`` the previous one left; that of the last
  task is returned as ``metrics["inner_state"]``."""
  def body(carry, task):
    total, inner = carry
    grads, metrics = task_grad(task, inner)
    inner = metrics.pop("inner_state")
    return (jax.tree.map(jnp.add, total, (grads, metrics)), inner), None

  first = jax.tree.map(lambda x: x[0], task_batch)
  shapes = jax.eval_shape(task_grad, first, inner_state)
  shapes[1].pop("inner_state")
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (total, inner), _ = jax.lax.scan(body, (zeros, inner_state), task_batch)
  grads, metrics = jax.tree.map(lambda x: x / num_tasks(task_batch), total)
  return grads, {**metrics, "inner_state": inner}


def reptile_step(state: MetaState, task_batch: Task, *, config: ReptileConfig) -> tuple[MetaState, dict]:
  """One Reptile outer step: :func:`reptile_grad`, then the outer optimizer (and, with
  ``carry_inner_state``, the inner state its ``carry_mode`` carries on, kept for the next step)."""
  grads, metrics = reptile_grad(state, task_batch, config=config)
  new, metrics = apply_outer_update(config.optimizer, state, grads, metrics)
  if not config.carry_inner_state:
    return new, metrics
  return new._replace(meta_params={**new.meta_params, "inner_state": metrics.pop("inner_state")}), metrics


def _eval_steps(config: InnerLoopConfig, inner_steps: Optional[int]) -> int:
  if inner_steps is not None:
    check_positive_int(inner_steps, "inner_steps")
  return inner_steps or config.eval_inner_steps or config.inner_steps


def adapt_params(config: InnerLoopConfig, state: MetaState, task: Task, inner_steps: Optional[int] = None) -> PyTree:
  """The parameters after adapting ``state``'s meta-parameters to one task's support set
  (``inner_steps``, default ``eval_inner_steps`` or ``inner_steps``; first order), as
  :meth:`InnerLoopConfig.forward` takes them (normalising with running statistics where kept)."""
  check_task(task, batched=False)
  return adapt_task(config, state.meta_params, task, _eval_steps(config, inner_steps), True, False, True,
                    training=False)[0]


def predict(state: MetaState, task: Task, inner_steps: Optional[int] = None, *,
            config: InnerLoopConfig) -> Array:
  """Query predictions ``(n_query, ...)`` of one task after adaptation (0 steps: none)."""
  params = (initial_params(config, state.meta_params, True) if inner_steps == 0
            else adapt_params(config, state, task, inner_steps))
  return config.forward(params, task.x_query)[0]


def evaluate(state: MetaState, task_batch: Task, inner_steps: Optional[int] = None, *,
             config: InnerLoopConfig) -> dict:
  """Query metrics of every task before and after adapting on its support set.

  Args:
    state: a :class:`MetaState`.
    task_batch: a :class:`Task` batch.
    inner_steps: adaptation steps (default ``config.eval_inner_steps`` or
      ``config.inner_steps``).
    config: the static configuration.

  Returns:
    ``{name: (tasks,)}``: ``loss``, ``support_loss`` and ``metrics_fn`` entries after
    adaptation, ``loss_before`` (and e.g. ``accuracy_before``) for the initialisation.
    Where running statistics are kept, every pass normalises with them.
  """
  check_task(task_batch, batched=True)
  steps = _eval_steps(config, inner_steps)

  def one(task):
    adapted, info = adapt_task(config, state.meta_params, task, steps, True, False, True, training=False)
    return {**query_metrics(config, initial_params(config, state.meta_params, True), task, "_before"),
            **query_metrics(config, adapted, task), "support_loss": info.support_loss[0]}

  return map_tasks(one, task_batch, config.task_strategy)


def learner(config: InnerLoopConfig) -> MetaLearner:
  """The :class:`~metajax.core.MetaLearner` of a :class:`MAMLConfig` or :class:`ReptileConfig`."""
  step = reptile_step if isinstance(config, ReptileConfig) else meta_step
  if not isinstance(config, (MAMLConfig, ReptileConfig)):
    raise TypeError(f"learner: expected a MAMLConfig or ReptileConfig, got {type(config).__name__}")
  return bind(config, init, step, evaluate, predict)


def maml(apply_fn: ApplyFn, **kwargs: Any) -> MetaLearner:
  """MAML (Finn et al. 2017), second order; ``kwargs`` are :class:`MAMLConfig` fields."""
  return learner(MAMLConfig(apply_fn, **kwargs))


def fomaml(apply_fn: ApplyFn, **kwargs: Any) -> MetaLearner:
  """First-order MAML (Finn et al. 2017, §5.2)."""
  return learner(MAMLConfig(apply_fn, first_order=True, **kwargs))


def meta_sgd(apply_fn: ApplyFn, **kwargs: Any) -> MetaLearner:
  """Meta-SGD: a learned inner learning rate for every parameter entry (Li et al. 2017)."""
  return learner(MAMLConfig(apply_fn, inner_lr_mode="per_param", **kwargs))


def anil(apply_fn: ApplyFn, head: str = "head", **kwargs: Any) -> MetaLearner:
  """ANIL: only parameters under the top-level module ``head`` adapt (Raghu et al. 2020)."""
  return learner(MAMLConfig(apply_fn, adapt_filter=functools.partial(_under, head), **kwargs))


def _under(module: str, path: str) -> bool:
  return path.split("/")[0] == module


def maml_plus_plus(apply_fn: ApplyFn, **kwargs: Any) -> MetaLearner:
  """MAML++: per-step per-tensor learned inner rates and the multi-step loss (Antoniou et al. 2019).

  Its other parts are options: derivative-order annealing (``first_order_until=N``) and
  cosine annealing of the meta-learning rate (``optimizer=optax.adam(optax.cosine_decay_schedule(...))``;
  ``metajax train --outer-lr-decay-steps N``), per-step BatchNorm weights and biases
  (``per_step_filter=is_batch_norm``) and per-step BatchNorm running statistics
  (``running_stats=RunningStats(initial)`` with a statistics-aware ``apply_fn``, e.g. from
  :func:`metajax.models.functional_with_stats`).
  """
  return learner(MAMLConfig(apply_fn, inner_lr_mode="per_step", multi_step_loss=True, **kwargs))


def reptile(apply_fn: ApplyFn, **kwargs: Any) -> MetaLearner:
  """Reptile (Nichol et al. 2018); ``kwargs`` are :class:`ReptileConfig` fields."""
  return learner(ReptileConfig(apply_fn, **kwargs))
