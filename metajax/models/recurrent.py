"""Pieces shared by the recurrent meta-learners: Flax cell lookup, zero carries, and
the log-magnitude/sign preprocessing of gradients and losses."""
from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax.core.validate import check_positive_int

Array = jax.Array

CellKind = Literal["lstm", "optimized_lstm", "gru"]
CELLS: dict[str, type[nn.RNNCellBase]] = {
    "lstm": nn.LSTMCell,
    "optimized_lstm": nn.OptimizedLSTMCell,
    "gru": nn.GRUCell,
}


def make_cell(kind: CellKind, features: int, **kwargs: Any) -> nn.RNNCellBase:
  """A Flax RNN cell by name (``"lstm"``, ``"optimized_lstm"`` or ``"gru"``)."""
  if kind not in CELLS:
    raise ValueError(f"unknown cell {kind!r}; choose one of {sorted(CELLS)}")
  check_positive_int(features, "cell features")
  return CELLS[kind](features, **kwargs)


def zero_carry(kind: CellKind, features: int, batch: int, dtype: Any = jnp.float32) -> Any:
  """The all-zero carry of a ``kind`` cell for ``batch`` rows, in ``dtype``."""
  cell = make_cell(kind, features, parent=None, param_dtype=dtype)  # a detached helper, never a submodule
  return cell.initialize_carry(jax.random.PRNGKey(0), (batch, features))


def log_sign(x: Array, p: float = 10.0) -> Array:
  """Gradient preprocessing of Andrychowicz et al. 2016 (appendix A): ``(...,) -> (..., 2)``.

  ``(log|x| / p, sign x)`` when ``|x| >= e^-p``, else ``(-1, e^p x)``: magnitudes
  spanning many orders become O(1) inputs while the sign is kept.
  """
  x = jnp.asarray(x)
  big = jnp.abs(x) >= jnp.exp(-p)
  safe = jnp.where(big, jnp.abs(x), 1.0)  # keeps log's gradient finite where it is not used
  first = jnp.where(big, jnp.log(safe) / p, -1.0)
  second = jnp.where(big, jnp.sign(x), jnp.exp(p) * x)
  return jnp.stack([first, second], axis=-1)
