"""Conv4, the four-block few-shot backbone of the MAML / ProtoNet papers."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from metajax.models.layers import Conv, ConvImpl, max_pool_2x2


class Conv4(nn.Module):
  """``(n, h, w, c) -> (n, num_classes)``, or ``(n, features)`` embeddings when ``num_classes`` is None.

  Four blocks of 3×3 conv (``width`` channels, no bias: BatchNorm's shift
  replaces it) → BatchNorm → ReLU → 2×2 max-pool.
  BatchNorm always normalises with the statistics of the batch it is given
  (``use_running_average=False``), as MAML does: inside the inner loop that is the
  support set of one task, at the query step the query set. Use
  :func:`metajax.models.functional` to get a pure ``apply(params, x)``.

  Attributes:
    num_classes: output logits; ``None`` returns the flattened features.
    width: channels of every conv block (64 for Omniglot, 32 for mini-ImageNet).
    conv_impl: see :class:`metajax.models.Conv` (``"auto"``: fast custom-VJP convolution on
      CPU, XLA's on GPU/TPU; pass ``"xla"`` for forward-mode ``jax.jvp``/``jax.jacfwd``).
  """

  num_classes: Optional[int] = 5
  width: int = 64
  conv_impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(4):
      x = Conv(self.width, impl=self.conv_impl, use_bias=False, name=f"conv_{i}")(x)
      x = nn.BatchNorm(use_running_average=False, momentum=0.0, name=f"norm_{i}")(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, name="head")(x)
