"""A configured learner and its data for a :class:`~metajax.harness.args.TrainArgs`:
the registry builds the learner, the dataset supplies the task samplers."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metajax.core import MetaLearner, MetaState, Task
from metajax.data import cifar100, cub, episodes, mini_imagenet, omniglot, sinusoid, tiered_imagenet
from metajax.data.images import ImageClasses
from metajax.harness.args import TrainArgs
from metajax.learners import registry


# ``loader(split, data_dir) -> ImageClasses`` of each image dataset.
LOADERS: dict[str, Callable[..., ImageClasses]] = {
    "omniglot": omniglot.load,
    "mini-imagenet": mini_imagenet.load,
    "cifar-fs": functools.partial(cifar100.load, benchmark="cifar-fs"),
    "fc100": functools.partial(cifar100.load, benchmark="fc100"),
    "tiered-imagenet": tiered_imagenet.load,
    "cub": cub.load,
}


class Problem(NamedTuple):
  """A configured learner and its data.

  Attributes:
    learner: the :class:`MetaLearner`.
    entry: its :class:`~metajax.learners.registry.Entry`.
    state: the initial :class:`MetaState`.
    sample_fn: ``(key[, train_data]) -> Task`` batch of ``meta_batch`` training tasks.
    train_data: the training images (``None`` for generated tasks).
    eval_tasks: ``(key, n, queries=eval_queries) -> Task`` batch of ``n`` held-out tasks with
      ``queries`` per class (or point); traceable in ``key`` (``harness.run.evaluate`` vmaps
      ``eval_tasks(key, 1)`` over one key per task).
    evaluate: ``learner.evaluate`` jitted (``inner_steps`` static).
  """

  learner: MetaLearner
  entry: registry.Entry
  state: MetaState
  sample_fn: Callable[..., Task]
  train_data: Optional[jax.Array]
  eval_tasks: Callable[..., Task]
  evaluate: Callable[..., dict]


def outer_optimizer(args: TrainArgs) -> optax.GradientTransformation:
  """``--outer-optimizer`` (Adam, or SGD) at ``--outer-lr``, with ``--outer-lr-decay-steps`` set
  annealed to 0 over that many meta-steps (cosine as in MAML++, or linear as Reptile's meta step
  size) or halved after every that many (``halve``: Snell et al. 2017, Sung et al. 2018), after
  clipping to ``--clip-grad-norm`` when set: the whole gradient's global norm, or each network's
  (``--clip-scope network``: :func:`clip_each_network`)."""
  lr, steps = args.outer_lr, args.outer_lr_decay_steps
  if steps:
    lr = {"cosine": lambda: optax.cosine_decay_schedule(lr, steps),
          "linear": lambda: optax.linear_schedule(lr, 0.0, steps),
          "halve": lambda: optax.exponential_decay(lr, steps, decay_rate=0.5, staircase=True)}[args.outer_lr_decay]()
  optimizer = optax.adam(lr) if args.outer_optimizer == "adam" else optax.sgd(lr)
  if args.clip_grad_norm is not None:
    clip = clip_each_network if args.clip_scope == "network" else optax.clip_by_global_norm
    optimizer = optax.chain(clip(args.clip_grad_norm), optimizer)
  return optimizer


def clip_each_network(max_norm: float) -> optax.GradientTransformation:
  """Clips each network's updates to global norm ``max_norm`` apart: the entries of a learner's
  parameter dict (``registry.Entry.networks``), as Sung et al.'s code (2018) clips its encoder's and
  its relation module's gradients each to 0.5 (``clip_grad_norm``)."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params
    if not isinstance(updates, Mapping):
      raise TypeError(f"clip_each_network: updates must be a dict of networks, got {type(updates).__name__}")
    return type(updates)({name: clip.update(net, clip.init(net))[0] for name, net in updates.items()}), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def inner_optimizer(args: TrainArgs) -> Optional[optax.GradientTransformation]:
  """``None`` (SGD at ``--inner-lr``), or Reptile's inner Adam: ``--inner-lr``, ``β1 = 0``
  (Nichol et al. 2018, their code); its state is new for every task unless
  ``--carry-inner-state``."""
  return None if args.inner_optimizer == "sgd" else optax.adam(args.inner_lr, b1=0.0)


def _problem(args: TrainArgs, x_shape: tuple, classes: bool, sample_fn: Callable[..., Task],
             train_data: Optional[jax.Array], eval_tasks: Callable[..., Task]) -> Problem:
  """Builds the learner for ``--train-ways`` classes, and for ``--ways`` (evaluation) when
  they differ; the registry's ``ways_free`` learners share one state between the two."""
  entry = registry.get(args.algo)
  k_init, k_state = jax.random.split(jax.random.PRNGKey(args.seed))

  def make(ways):
    setup = registry.Setup(x_shape=x_shape, ways=ways, width=args.width, downsample=args.downsample,
                           conv_features=args.conv_features, conv_init=args.conv_init,
                           unpadded_blocks=args.unpadded_blocks,
                           inner_steps=args.inner_steps, inner_lr=args.inner_lr,
                           eval_inner_steps=args.eval_inner_steps, inner_optimizer=inner_optimizer(args),
                           inner_batch_size=args.inner_batch, eval_inner_batch_size=args.eval_inner_batch,
                           carry_inner_state=args.carry_inner_state, carry_mode=args.carry_mode,
                           optimizer=outer_optimizer(args), task_strategy=args.task_strategy)
    return entry.build(setup, k_init)

  learner, params = make(args.train_ways if classes else None)
  tester = make(args.ways)[0] if classes and args.train_ways != args.ways else learner
  return Problem(learner, entry, learner.init(k_state, params), sample_fn, train_data, eval_tasks,
                 jax.jit(tester.evaluate, static_argnames="inner_steps"))


def build(args: TrainArgs) -> Problem:
  """The learner, its initial state and its task samplers for ``args.dataset``."""
  if args.dataset == "sinusoid":
    sample_fn = functools.partial(sinusoid.sample, num_tasks=args.meta_batch, shots=args.train_shots,
                                  queries=args.queries)
    eval_tasks = lambda key, n, queries=args.eval_queries: sinusoid.sample(key, n, args.shots, queries)
    return _problem(args, (1,), False, sample_fn, None, eval_tasks)
  loader = LOADERS[args.dataset]
  if args.dataset == "omniglot":
    loader = functools.partial(loader, resample=args.resample, invert=args.invert)
  train = loader(args.train_split, args.data_dir)
  episodes.check_episode_shape(*train.images.shape[:2], args.train_ways, args.train_shots, args.queries,
                               train.counts)  # before the test split is decoded
  test = loader(args.eval_split, args.data_dir)
  episodes.check_episode_shape(*test.images.shape[:2], args.ways, args.shots, args.eval_queries, test.counts)
  sample_fn = functools.partial(episodes.sample, num_tasks=args.meta_batch, ways=args.train_ways,
                                shots=args.train_shots, queries=args.queries, counts=train.counts)
  test_images = jnp.asarray(test.images)
  eval_tasks = lambda key, n, queries=args.eval_queries: episodes.sample(
      key, test_images, num_tasks=n, ways=args.ways, shots=args.shots, queries=queries, counts=test.counts)
  x_shape = train.images.shape[2:] + ((1,) if train.images.ndim == 4 else ())  # grey images gain a channel
  return _problem(args, x_shape, True, sample_fn, jnp.asarray(train.images), eval_tasks)
