"""The registry: every algorithm by name, with how to build it for a standard setting.

The CLI, the benchmarks and the conformance suite (``tests/test_conformance.py``)
all read :data:`REGISTRY`, so a new learner is its module plus one :func:`register`
call (and is then tested by the conformance suite). A builder maps a
:class:`Setup` (input shape, classes, widths, inner-loop settings, optimizer) and a
PRNG key to ``(MetaLearner, initial params)``, choosing the backbone the papers use:
Conv4 for images, the MAML paper's 40-40 MLP for vectors.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax.core import losses
from metajax.core.meta import TaskStrategy
from metajax.core.protocol import MetaLearner
from metajax.learners import gradient, implicit, learned_opt, metric, recurrent
from metajax.learners.forward import accuracy_metrics
from metajax.learners.gradient import CarryMode, check_carry_mode
from metajax.models import MLP, Conv4, RelationModule, functional
from metajax.models.conv4 import CONV_INITS, DOWNSAMPLES, VECTOR_FEATURES, ConvInit, Downsample, VectorFeatures

PyTree = Any
Build = Callable[["Setup", jax.Array], tuple[MetaLearner, PyTree]]


@dataclasses.dataclass(frozen=True)
class Setup:
  """A standard setting to build a learner for.

  Attributes:
    x_shape: one input example's shape: ``(1,)`` for sinusoid, ``(28, 28, 1)`` for
      Omniglot. Rank 3 means images (Conv4 backbone), rank 1 vectors (MLP 40-40).
    ways: classes per task; ``None`` is regression onto one output.
    width: channels of the Conv4 blocks.
    downsample: how the Conv4 blocks halve the resolution (:class:`~metajax.models.Conv4`).
    conv_features: how Conv4's last maps become vectors (the head's input, or the metric
      learners' embedding), ``"flatten"`` or ``"mean"`` over space
      (:class:`~metajax.models.Conv4`'s ``features``); learners with ``Entry.feature_maps``
      compare the maps themselves, and their builds refuse ``"mean"``.
    conv_init: how the Conv4 blocks (and the Relation network's relation module) start,
      ``"lecun"``, ``"torch"``, ``"torch_legacy"`` or ``"sung"``
      (:func:`~metajax.models.conv4.conv_block_init`, :class:`~metajax.models.RelationModule`).
    unpadded_blocks: how many of the first Conv4 blocks convolve without padding
      (:class:`~metajax.models.Conv4`; 2 in the Relation network's embedding).
    inner_steps: inner steps (the Meta-LSTM's updates; the learned optimizer's horizon).
    inner_lr: inner learning rate (initial value when learned).
    eval_inner_steps: inner steps at evaluation (default ``inner_steps``).
    inner_optimizer: the inner loop's Optax transformation instead of SGD at ``inner_lr``,
      and ``inner_batch_size`` / ``eval_inner_batch_size``: its support mini-batches
      (learners with ``Entry.gradient_inner_loop`` only, the others' builds refuse them;
      ``None``: SGD, whole support).
    carry_inner_state: Reptile's inner-optimizer state carried across tasks
      (:class:`~metajax.learners.ReptileConfig`; reptile only, the others' builds refuse it),
      and ``carry_mode`` how a step's tasks share it (``"sequential"`` needs it).
    optimizer: the outer Optax optimizer.
    task_strategy: how the task axis runs.
  """

  x_shape: tuple[int, ...] = (1,)
  ways: Optional[int] = None
  width: int = 64
  downsample: Downsample = "max_pool"
  conv_features: VectorFeatures = "flatten"
  conv_init: ConvInit = "lecun"
  unpadded_blocks: int = 0
  inner_steps: int = 1
  inner_lr: float = 0.01
  eval_inner_steps: Optional[int] = None
  inner_optimizer: Optional[optax.GradientTransformation] = None
  inner_batch_size: Optional[int] = None
  eval_inner_batch_size: Optional[int] = None
  carry_inner_state: bool = False
  carry_mode: CarryMode = "mean"
  optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.adam(1e-3))
  task_strategy: TaskStrategy = "auto"

  def __post_init__(self):
    if len(self.x_shape) not in (1, 3):
      raise ValueError(f"Setup: x_shape must be (features,) or (height, width, channels), got {self.x_shape}")
    if self.downsample not in DOWNSAMPLES:
      raise ValueError(f"Setup: unknown downsample {self.downsample!r}; choose one of {DOWNSAMPLES}")
    if self.conv_features not in VECTOR_FEATURES:
      raise ValueError(f"Setup: unknown conv_features {self.conv_features!r}; choose one of {VECTOR_FEATURES}")
    if self.conv_init not in CONV_INITS:
      raise ValueError(f"Setup: unknown conv_init {self.conv_init!r}; choose one of {CONV_INITS}")
    for name, default in (("conv_init", "lecun"), ("unpadded_blocks", 0)):
      if getattr(self, name) != default and not self.images:
        raise ValueError(f"Setup: {name} {getattr(self, name)!r} sets Conv4's blocks; x_shape {self.x_shape} "
                         "is not an image")
    check_carry_mode(self.carry_mode, self.carry_inner_state, "Setup: ")

  @property
  def images(self) -> bool:
    return len(self.x_shape) == 3

  def example(self) -> jax.Array:
    """A zero input batch ``(1, *x_shape)`` to initialise modules with."""
    return jnp.zeros((1,) + tuple(self.x_shape))

  def backbone(self, head: bool = True) -> Optional[nn.Module]:
    """Conv4 (``ways`` logits, or features without ``head``) for images; the 40-40 MLP
    for vectors (``None`` without ``head``: the input is its own feature vector)."""
    if self.images:
      return Conv4(num_classes=self.ways if head else None, width=self.width, downsample=self.downsample,
                   features=self.conv_features, conv_init=self.conv_init, unpadded_blocks=self.unpadded_blocks)
    return MLP(hidden=(40, 40), out=self.ways or 1) if head else None

  def embedding(self) -> nn.Module:
    """The metric learners' embedding: Conv4 features for images, a 40-40 MLP for vectors."""
    return self.backbone(head=False) if self.images else MLP(hidden=(40,), out=40)

  def task_loss(self) -> dict:
    """``loss_fn``/``metrics_fn``: cross-entropy and accuracy, or MSE for regression."""
    if self.ways is None:
      return dict(loss_fn=losses.mse, metrics_fn=None)
    return dict(loss_fn=losses.cross_entropy, metrics_fn=accuracy_metrics)


class Entry(NamedTuple):
  """A registered algorithm.

  Attributes:
    build: ``(setup, key) -> (MetaLearner, initial params)``.
    inner_steps: trains with ``Setup.inner_steps`` inner updates.
    eval_inner_steps: ``evaluate``/``predict`` accept an ``inner_steps`` override.
    classification_only: needs ``Setup.ways``.
    mean_of_task_grads: ``meta_step`` is one optimizer step on the mean of
      independent per-task gradients (so a batch equals its tasks one by one under SGD);
      for reptile, with ``Setup.carry_mode="mean"`` (``"sequential"`` chains the tasks).
    ways_free: the parameters do not depend on ``Setup.ways``, so a learner built for
      one number of classes shares its state with one built for another (ProtoNet
      trains 60-way and tests 5-way).
    gradient_inner_loop: adapts by :func:`~metajax.core.adapt` gradient steps, so
      ``Setup.inner_optimizer`` and the inner mini-batch sizes apply.
    carries_inner_state: ``Setup.carry_inner_state`` applies (Reptile's carried inner Adam).
    feature_maps: compares Conv4 feature maps, not vectors, so ``Setup.conv_features`` does not
      apply (the Relation network).
    networks: the parameters are a dict of separate networks (the Relation network's ``embed``
      and ``relation``; Matching networks' ``embed`` and ``fce``), which an outer optimizer may
      treat apart (``harness.problem.clip_each_network``).
  """

  build: Build
  inner_steps: bool
  eval_inner_steps: bool
  classification_only: bool = False
  mean_of_task_grads: bool = True
  ways_free: bool = False
  gradient_inner_loop: bool = False
  carries_inner_state: bool = False
  feature_maps: bool = False
  networks: bool = False


REGISTRY: dict[str, Entry] = {}
GRADIENT_INNER_LOOP_OPTIONS = ("inner_optimizer", "inner_batch_size", "eval_inner_batch_size")


def register(name: str, build: Build, **flags: bool) -> None:
  """Adds ``name`` to :data:`REGISTRY` (``flags`` are :class:`Entry` fields). Its ``build``
  refuses a :class:`Setup` with options the learner would ignore (:func:`ignored_options`)."""
  if name in REGISTRY:
    raise ValueError(f"a learner named {name!r} is already registered")

  @functools.wraps(build)
  def checked(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
    why = ignored_options(name, [f for f in GRADIENT_INNER_LOOP_OPTIONS if getattr(setup, f) is not None],
                          carry="carry_inner_state" if setup.carry_inner_state else None,
                          features=f"conv_features {setup.conv_features!r}" if setup.conv_features != "flatten"
                          else None)
    if why:
      raise ValueError(f"Setup: {why}")
    return build(setup, key)

  REGISTRY[name] = Entry(checked, **flags)


def ignored_options(name: str, inner_loop: Sequence[str], carry: Optional[str] = None,
                    features: Optional[str] = None) -> Optional[str]:
  """Why learner ``name`` would ignore the given gradient inner-loop options, the option ``carry``
  that carries the inner state and the option ``features`` that makes Conv4's maps vectors (each
  spelled as the caller names it); ``None`` if it uses them all."""
  entry, why = get(name), []
  if inner_loop and not entry.gradient_inner_loop:
    why.append(f"{', '.join(inner_loop)} set a gradient inner loop; {name} has none (choose one of "
               f"{names_with('gradient_inner_loop')})")
  if carry and not entry.carries_inner_state:
    why.append(f"{carry} carries the inner optimizer's state across tasks, which {name} does not (learners "
               f"that do: {names_with('carries_inner_state')})")
  if features and entry.feature_maps:
    why.append(f"{features} makes Conv4's feature maps vectors; {name} compares the maps themselves")
  return "; ".join(why) or None


def names_with(flag: str) -> str:
  """The registered names whose :class:`Entry` sets ``flag``, sorted and comma-separated (for errors)."""
  if flag not in Entry._fields or flag == "build":
    raise ValueError(f"names_with: {flag!r} is not an Entry flag; choose one of {Entry._fields[1:]}")
  return ", ".join(n for n, e in sorted(REGISTRY.items()) if getattr(e, flag))


def get(name: str) -> Entry:
  """The :class:`Entry` of ``name``, or a ``ValueError`` listing the registered names."""
  if name not in REGISTRY:
    raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]


def _gradient(factory: Callable[..., MetaLearner], per_step_batch_norm: bool = False) -> Build:
  """The backbone, adapted by ``factory``; ``per_step_batch_norm``: on images, MAML++'s
  per-step BatchNorm weights and biases. (Not its running statistics: evaluating with them
  instead of each batch's statistics leaves Omniglot MAML++ at chance, RESULTS.md.)"""
  def build(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
    model = setup.backbone()
    params, apply_fn = functional(model, model.init(key, setup.example()))
    options = dict(per_step_filter=gradient.is_batch_norm) if per_step_batch_norm and setup.images else {}
    if setup.carry_inner_state:  # only for entries that carry it (register's check)
      options.update(carry_inner_state=True, carry_mode=setup.carry_mode)
    return factory(apply_fn, optimizer=setup.optimizer, inner_steps=setup.inner_steps, inner_lr=setup.inner_lr,
                   eval_inner_steps=setup.eval_inner_steps, inner_optimizer=setup.inner_optimizer,
                   inner_batch_size=setup.inner_batch_size, eval_inner_batch_size=setup.eval_inner_batch_size,
                   task_strategy=setup.task_strategy, **setup.task_loss(), **options), params
  return build


def _metric(factory: Callable[..., MetaLearner], fce: bool = False) -> Build:
  """A Conv4 embedding (no head); ``fce``: refined by Matching networks' full-context
  embeddings. Relation networks on images embed with Conv4 pooled in its first two
  blocks only and score with the paper's conv :class:`RelationModule` (Sung et al.,
  2018); on vectors, with an MLP over concatenated embeddings."""

  def build(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
    common = dict(optimizer=setup.optimizer, task_strategy=setup.task_strategy)
    k_embed, k_head = jax.random.split(key)
    x0 = setup.example()
    if factory is not metric.relation:
      embed = setup.embedding()
      params, embed_fn = functional(embed, embed.init(k_embed, x0))
      if not fce:
        return factory(embed_fn, setup.ways, **common), params
      feature, context = embed_fn(params, x0), metric.FullContextEmbedding()
      fce_params, fce_fn = functional(context, context.init(k_head, feature, feature))
      return factory(embed_fn, setup.ways, fce_fn=fce_fn, **common), {"embed": params, "fce": fce_params}
    if setup.images:
      embed = Conv4(num_classes=None, width=setup.width, pooled_blocks=2, features="maps",
                    downsample=setup.downsample, conv_init=setup.conv_init, unpadded_blocks=setup.unpadded_blocks)
      relation = RelationModule(width=setup.width, conv_init=setup.conv_init)
    else:
      embed, relation = setup.embedding(), MLP(hidden=(8,), out=1)
    params, embed_fn = functional(embed, embed.init(k_embed, x0))
    feature = embed_fn(params, x0)
    pair = jnp.zeros(feature.shape[:-1] + (2 * feature.shape[-1],))
    rel_params, rel_fn = functional(relation, relation.init(k_head, pair))
    return factory(embed_fn, rel_fn, setup.ways, **common), {"embed": params, "relation": rel_params}

  return build


def _black_box_rnn(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
  module = recurrent.BlackBoxRNN(out=setup.ways or 1, hidden=2 * setup.width if setup.ways else setup.width,
                                 encoder=setup.backbone(head=False))
  x0 = setup.example()
  params, apply_fn = functional(module, module.init(jax.random.split(key)[0], x0, jnp.zeros((1, setup.ways or 1)), x0))
  return recurrent.black_box_rnn(apply_fn, setup.ways, optimizer=setup.optimizer,
                                 task_strategy=setup.task_strategy), params


def _meta_lstm(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
  k_model, k_meta = jax.random.split(key)
  model = setup.backbone()
  params, apply_fn = functional(model, model.init(k_model, setup.example()))
  cell = recurrent.MetaLSTMCell()
  theta = ravel_pytree(params)[0]
  cell_params = cell.init(k_meta, cell.initial_state(theta), theta, jnp.float32(0.0))["params"]
  learner = recurrent.meta_lstm(apply_fn, cell, steps=setup.inner_steps, inner_loss_fn=setup.task_loss()["loss_fn"],
                                ways=setup.ways, optimizer=setup.optimizer, task_strategy=setup.task_strategy)
  return learner, {"learner": params, "meta_lstm": cell_params}


def _learned_optimizer(setup: Setup, key: jax.Array) -> tuple[MetaLearner, PyTree]:
  k_model, k_meta = jax.random.split(key)
  model, x0 = setup.backbone(), setup.example()
  _, apply_fn = functional(model, model.init(k_model, x0))
  net = learned_opt.LSTMOptimizerNet()
  learner = learned_opt.learned_optimizer(
      net, apply_fn, lambda k: model.init(k, x0)["params"], loss_fn=setup.task_loss()["loss_fn"],
      horizon=setup.inner_steps, truncation=setup.inner_steps, optimizer=setup.optimizer,
      task_strategy=setup.task_strategy)
  return learner, net.init_params(k_meta)


for _name, _factory in (("maml", gradient.maml), ("fomaml", gradient.fomaml), ("meta-sgd", gradient.meta_sgd),
                        ("anil", gradient.anil), ("reptile", gradient.reptile), ("imaml", implicit.imaml)):
  register(_name, _gradient(_factory), inner_steps=True, eval_inner_steps=True, gradient_inner_loop=True,
           carries_inner_state=_factory is gradient.reptile)
register("maml++", _gradient(gradient.maml_plus_plus, per_step_batch_norm=True), inner_steps=True,
         eval_inner_steps=True, gradient_inner_loop=True)
# Matching networks normalise only the support embeddings: with post-ReLU features the plain cosine
# softmax is nearly flat and 20-way training stalls (RESULTS.md: 59.6 % vs 88.3 % after 200 steps).
_matching = functools.partial(metric.matching, normalize_query=False)
for _name, _build in (("protonet", _metric(metric.prototypical)), ("matching", _metric(_matching)),
                      ("matching-fce", _metric(_matching, fce=True)), ("relation", _metric(metric.relation))):
  register(_name, _build, inner_steps=False, eval_inner_steps=False, classification_only=True, ways_free=True,
           feature_maps=_name == "relation", networks=_name in ("matching-fce", "relation"))
register("rnn", _black_box_rnn, inner_steps=False, eval_inner_steps=False)
register("meta-lstm", _meta_lstm, inner_steps=True, eval_inner_steps=False)
register("learned-opt", _learned_optimizer, inner_steps=True, eval_inner_steps=True, mean_of_task_grads=False)
