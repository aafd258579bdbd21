"""Turning a Flax module into the ``apply(params, x)`` function the algorithms take."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

PyTree = Any


def functional(module: nn.Module, variables: PyTree) -> tuple[PyTree, Callable[..., Any]]:
  """Splits Flax ``variables`` into trainable ``params`` and a pure ``apply``.

  Collections other than ``"params"`` (e.g. ``"batch_stats"``) are treated as
  scratch state: passed in, declared mutable and their updates dropped. So a
  ``nn.BatchNorm(use_running_average=False)`` normalises every forward pass with
  the statistics of the batch it sees — per task and per inner step, as in
  MAML's reference code — and ``apply`` stays a pure function of ``params``.

  Args:
    module: a Flax linen module.
    variables: the output of ``module.init(...)``.

  Returns:
    ``(params, apply)`` with ``apply(params, *inputs) -> module output`` (the
    module's ``__call__`` arguments, e.g. one batch ``x``).
  """
  if "params" not in variables:
    raise ValueError(f"functional: variables have no 'params' collection (got {list(variables)})")
  params = variables["params"]
  scratch = {k: v for k, v in variables.items() if k != "params"}
  if not scratch:
    def apply(p: PyTree, *args: Any) -> Any:
      return module.apply({"params": p}, *args)
  else:
    mutable = list(scratch)

    def apply(p: PyTree, *args: Any) -> Any:
      out, _ = module.apply({"params": p, **scratch}, *args, mutable=mutable)
      return out
  return params, apply


def functional_with_stats(module: nn.Module, variables: PyTree) -> tuple[PyTree, PyTree, Callable[..., Any]]:
  """Splits Flax ``variables`` into ``params``, BatchNorm ``stats`` and a pure
  ``apply(params, x, stats) -> (output, batch statistics)`` (MAML++ running statistics,
  :class:`metajax.learners.RunningStats`).

  With ``stats=None`` the module normalises with the batch's statistics and ``apply``
  returns them (the module's ``BatchNorm`` layers need ``momentum=0``, so that their
  updated ``batch_stats`` are exactly the batch's); otherwise it normalises with
  ``stats`` and returns them unchanged. The module's ``__call__`` must accept
  ``use_running_average``, as :class:`~metajax.models.Conv4`'s does.

  Returns:
    ``(params, stats, apply)``; ``stats`` is the initial ``"batch_stats"`` collection.
  """
  if "batch_stats" not in variables:
    raise ValueError("functional_with_stats: variables have no 'batch_stats' collection (no BatchNorm layer)")
  params, stats = variables["params"], variables["batch_stats"]

  def apply(p: PyTree, x: Any, running: PyTree = None) -> tuple[Any, PyTree]:
    if running is None:
      out, updated = module.apply({"params": p, "batch_stats": stats}, x, use_running_average=False,
                                  mutable=["batch_stats"])
      return out, updated["batch_stats"]
    return module.apply({"params": p, "batch_stats": running}, x, use_running_average=True), running

  return params, stats, apply
