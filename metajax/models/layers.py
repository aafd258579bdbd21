"""Layers written for fast higher-order differentiation on every backend.

XLA:CPU runs the second-order gradient of ``reduce_window`` max-pooling slowly,
and turns per-task convolution weights under ``vmap`` into grouped convolutions
that are several times slower than plain ones. Both layers here are expressed
with slices, reshapes and (batched) matrix products instead, which every
backend runs well under ``vmap`` and ``grad`` of ``grad``.
"""
from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max-pool, stride 2, VALID (odd edges dropped): ``(n, h, w, c) -> (n, h//2, w//2, c)``.

  The elementwise maximum of four strided slices. (A reshape + ``max`` over the
  window axes is as fast, but XLA:CPU 0.10.2 computes its gradient wrongly under
  ``jit(vmap(grad))`` after BatchNorm; ``tests/test_models.py`` guards this.)
  """
  x = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
  return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                     jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def im2col(x: jax.Array, size: int) -> jax.Array:
  """SAME-padded ``size×size`` patches: ``(n, h, w, c) -> (n, h, w, size*size*c)``.

  The patch axis is ordered ``(dy, dx, c)``, matching a ``(size, size, c, out)`` kernel.
  """
  lo = (size - 1) // 2
  hi = size - 1 - lo
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  return jnp.concatenate(
      [xp[:, dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)], axis=-1)


class Conv(nn.Module):
  """Stride-1 SAME convolution, ``(n, h, w, c_in) -> (n, h, w, features)``.

  The kernel is a ``(size, size, c_in, features)`` param named ``kernel`` (as in
  ``nn.Conv``), plus a ``bias`` when ``use_bias``. ``impl="matmul"`` computes it as im2col and one matrix product;
  ``impl="xla"`` uses ``lax.conv_general_dilated``.
  """

  features: int
  size: int = 3
  impl: Literal["matmul", "xla"] = "matmul"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.size, self.size, c_in, self.features))
    if self.impl == "matmul":
      y = im2col(x, self.size) @ kernel.reshape(-1, self.features)
    elif self.impl == "xla":
      y = jax.lax.conv_general_dilated(
          x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      raise ValueError(f"Conv: unknown impl {self.impl!r}; use 'matmul' or 'xla'")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
