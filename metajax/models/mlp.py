"""Multi-layer perceptron (the MAML sinusoid learner: 1 → 40 → 40 → 1, ReLU)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """``(n, in) -> (n, out)`` with ReLU hidden layers.

  Attributes:
    hidden: widths of the hidden layers.
    out: width of the output layer.
  """

  hidden: Sequence[int] = (40, 40)
  out: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    return nn.Dense(self.out, name="head")(x)
