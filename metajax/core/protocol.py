"""The one protocol every meta-learner follows, and the metric names they report.

In the manner of optax's ``GradientTransformation``: an algorithm is a factory
(static configuration closed over) returning a :class:`MetaLearner`, a NamedTuple
of pure functions over one :class:`~metajax.core.MetaState` pytree and a
:class:`~metajax.core.Task` batch. They are not jitted: wrap them in ``jax.jit``
(``inner_steps`` static), ``vmap`` or ``shard_map`` as the caller needs.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax

from metajax.core.meta import MetaState
from metajax.core.tasks import Task

PyTree = Any
Array = jax.Array

# The metric vocabulary: one meaning per key, for every learner. ``meta_step`` reports
# scalars, task-batch means but ``grad_norm`` (:func:`~metajax.core.apply_outer_update`'s, the
# norm of the batch's meta-gradient); ``evaluate`` reports one value per task, ``(tasks,)``.
METRICS: dict[str, str] = {
    "objective": "the differentiated outer objective (meta_step only)",
    "grad_norm": "global norm of the meta-gradient the outer optimizer receives, before any clipping "
                 "(meta_step only; learned optimizer: the mean over its truncated segments' updates)",
    "loss": "query loss after adaptation, by the learner's own loss_fn",
    "accuracy": "query accuracy after adaptation (classification)",
    "loss_before": "query loss at the meta-learned initialisation, before adaptation "
                   "(learners that adapt parameters; evaluate only)",
    "accuracy_before": "query accuracy before adaptation (as loss_before)",
    "support_loss": "support loss before the first inner step (learners with an inner loop)",
    "support_loss_after": "support loss after the last inner step (learned optimizers)",
}


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as four pure functions.

  Attributes:
    init: ``(key, params) -> MetaState``; ``params`` are the initial model
      parameters, ``key`` seeds on-device task sampling.
    meta_step: ``(state, task_batch) -> (state, metrics)``: one outer step on a
      task batch (fields ``(tasks, n, ...)``); metrics are scalars, :data:`METRICS`.
    evaluate: ``(state, task_batch, inner_steps=None) -> {name: (tasks,)}``: query
      metrics of every task after adapting to its support set (``inner_steps``
      overrides the configured count; learners without an inner loop reject it).
    predict: ``(state, task, inner_steps=None) -> (n_query, ...)``: the query
      predictions of one (unbatched) task after adaptation.
  """

  init: Callable[[Array, PyTree], MetaState]
  meta_step: Callable[[MetaState, Task], tuple[MetaState, dict]]
  evaluate: Callable[..., dict]
  predict: Callable[..., Array]


def bind(config: Any, init: Callable[..., MetaState], meta_step: Callable[..., tuple],
         evaluate: Callable[..., dict], predict: Callable[..., Array]) -> MetaLearner:
  """The :class:`MetaLearner` of functions written for research code, that take the static
  configuration as ``config=`` (and ``init(config, params, key)``), with ``config`` bound."""
  return MetaLearner(
      init=lambda key, params: init(config, params, key),
      meta_step=functools.partial(meta_step, config=config),
      evaluate=functools.partial(evaluate, config=config),
      predict=functools.partial(predict, config=config))


def reject_inner_steps(inner_steps: Optional[int], who: str) -> None:
  """For learners that adapt inside one forward pass: ``inner_steps`` must be ``None``."""
  if inner_steps is not None:
    raise ValueError(f"{who} adapts without inner gradient steps; inner_steps must be None, "
                     f"got {inner_steps!r}")
