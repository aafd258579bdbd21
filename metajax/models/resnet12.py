"""ResNet-12, the few-shot backbone of TADAM / MetaOptNet (Oreshkin et al. 2018; Lee et al. 2019)."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from metajax.models.layers import Conv, ConvImpl, max_pool_2x2


class ResidualBlock(nn.Module):
  """Three 3×3 conv → BN → leaky ReLU layers, a 1×1 conv + BN shortcut, then a 2×2 max-pool."""

  width: int
  conv_impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
    norm = lambda name, h: nn.BatchNorm(momentum=0.0, name=name)(h, use_running_average=use_running_average)
    shortcut = norm("shortcut_norm", Conv(self.width, size=1, impl=self.conv_impl, use_bias=False,
                                          name="shortcut")(x))
    for i in range(3):
      x = norm(f"norm_{i}", Conv(self.width, impl=self.conv_impl, use_bias=False, name=f"conv_{i}")(x))
      if i < 2:
        x = nn.leaky_relu(x, 0.1)
    return max_pool_2x2(nn.leaky_relu(x + shortcut, 0.1))


class ResNet12(nn.Module):
  """``(n, h, w, c) -> (n, num_classes)``, or ``(n, widths[-1])`` features when ``num_classes`` is None.

  Four residual blocks (default widths 64-160-320-640), global average pooling,
  optional linear head. BatchNorm uses batch statistics, or with ``use_running_average``
  the stored ones, as in :class:`Conv4`.
  """

  num_classes: Optional[int] = 5
  widths: Sequence[int] = (64, 160, 320, 640)
  conv_impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = ResidualBlock(width, self.conv_impl, name=f"block_{i}")(x, use_running_average)
    x = x.mean(axis=(1, 2))
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, name="head")(x)
