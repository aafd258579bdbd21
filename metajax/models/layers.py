"""Convolution and max-pooling written for fast higher-order differentiation.

Meta-learning differentiates through gradients (second-order MAML), runs the task
batch as a loop on CPU, and vmaps it on GPU/TPU. Two XLA:CPU behaviours shape
this module (measurements in ``benchmarks/RESULTS.md``):

* JAX's own transpose rules turn a convolution's gradient into convolutions with
  feature/batch-swapped operands; inside a ``while`` loop (``lax.map``/``scan``
  over tasks) XLA:CPU runs those an order of magnitude slower than a forward
  convolution (jax-ml/jax#12868). :func:`conv2d` therefore has a hand-written
  VJP whose backward pass is a *forward* convolution (input gradient) and an
  im2col matrix product (kernel gradient), and the VJPs of those two are again
  those two: every order of differentiation stays on these fast paths.
* The gradient of ``max`` routes the cotangent by testing the input for
  equality with a recomputed maximum; after BatchNorm, XLA:CPU's fusions can
  make that test fail and give wrong gradients. :func:`max_pool_2x2` selects by
  the argmax of ``stop_gradient`` windows instead, correct by construction.
"""
from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["auto", "vjp", "matmul", "xla"]
CONV_IMPLS = ("auto", "vjp", "matmul", "xla")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_IM2COL_MAX_CHANNELS = 4  # forward by im2col + matmul up to this many input channels (RESULTS.md)
Pads = tuple[tuple[int, int], tuple[int, int]]


def _same_pads(size: int) -> Pads:
  lo = (size - 1) // 2
  return (lo, size - 1 - lo), (lo, size - 1 - lo)


def _patches(x: jax.Array, size: int, pads: Pads) -> jax.Array:
  """``(n, h, w, c) -> (n, h', w', size*size*c)`` padded patches, ordered ``(dy, dx, c)``."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  h = xp.shape[1] - size + 1
  w = xp.shape[2] - size + 1
  return jnp.concatenate(
      [xp[:, dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)], axis=-1)


def im2col(x: jax.Array, size: int) -> jax.Array:
  """SAME-padded ``size×size`` patches: ``(n, h, w, c) -> (n, h, w, size*size*c)``.

  The patch axis is ordered ``(dy, dx, c)``, matching a ``(size, size, c, out)`` kernel.
  """
  return _patches(x, size, _same_pads(size))


def _transposed(kernel: jax.Array) -> jax.Array:
  """The kernel of the input-gradient convolution: spatially flipped, in/out swapped."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _swap(pads: Pads) -> Pads:
  return (pads[0][1], pads[0][0]), (pads[1][1], pads[1][0])


def _matmul_conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  """The convolution as im2col patches times the flattened kernel."""
  return _patches(x, kernel.shape[0], pads) @ kernel.reshape(-1, kernel.shape[-1])


def _xla_conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  size, _, c_in, _ = kernel.shape
  if c_in <= _IM2COL_MAX_CHANNELS or size == 1:
    return _matmul_conv(x, kernel, pads)
  return _xla_conv(x, kernel, pads)


def _conv_fwd(x, kernel, pads):
  return _conv(x, kernel, pads), (x, kernel)


def _conv_bwd(pads, residuals, g):
  x, kernel = residuals
  return _conv(g, _transposed(kernel), _swap(pads)), _weight_grad(x, g, kernel.shape[0], pads)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _weight_grad(x: jax.Array, g: jax.Array, size: int, pads: Pads) -> jax.Array:
  """``∂⟨g, conv(x, k)⟩/∂k``: ``(size, size, c_in, c_out)``, as one im2col matrix product."""
  cols = _patches(x, size, pads)
  dw = cols.reshape(-1, cols.shape[-1]).T @ g.reshape(-1, g.shape[-1])
  return dw.reshape(size, size, x.shape[-1], g.shape[-1])


def _weight_grad_fwd(x, g, size, pads):
  return _weight_grad(x, g, size, pads), (x, g)


def _weight_grad_bwd(size, pads, residuals, dw_bar):
  x, g = residuals
  return _conv(g, _transposed(dw_bar), _swap(pads)), _conv(x, dw_bar, pads)


_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 SAME convolution ``(n, h, w, c_in), (k, k, c_in, c_out) -> (n, h, w, c_out)``.

  Equal, up to float rounding, to ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
  ("NHWC", "HWIO", "NHWC"))`` computed in ``jnp.result_type(x, kernel)``; the forward
  pass is XLA's convolution, or im2col and one matrix product for 1×1 kernels and at most
  four input channels (measured faster, ``benchmarks/RESULTS.md``). It has the custom VJP
  described in the module docstring: reverse mode at any order; forward mode
  (``jax.jvp``, ``jax.jacfwd``) is not defined for it — use ``impl="xla"`` there.
  """
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or x.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"conv2d: need x (n, h, w, c) and a square kernel (k, k, c, out); "
                     f"got x {x.shape}, kernel {kernel.shape}")
  dtype = jnp.result_type(x, kernel)
  return _conv(x.astype(dtype), kernel.astype(dtype), _same_pads(kernel.shape[0]))


def resolve_conv_impl(impl: ConvImpl) -> str:
  """``"auto"`` is ``"vjp"`` on CPU and ``"xla"`` on GPU/TPU (where XLA's own convolution
  gradients are fast and ``vmap`` over tasks is the default)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"Conv: unknown impl {impl!r}; choose one of {CONV_IMPLS}")
  if impl == "auto":
    return "vjp" if jax.default_backend() == "cpu" else "xla"
  return impl


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max-pool, stride 2, VALID (odd edges dropped): ``(n, h, w, c) -> (n, h//2, w//2, c)``.

  Each window's output is its element at the first argmax (row-major; NaN counts
  as the maximum, as in ``jnp.argmax``), chosen by selects whose predicates come
  from ``stop_gradient`` values and pass an optimization barrier, so XLA computes
  them once: the gradient goes to exactly that element, at every order of
  differentiation, with no equality test between recomputed values.
  """
  with jax.named_scope("max_pool_2x2"):
    x = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    corners = [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]   # (0,0), (0,1), (1,0), (1,1)
    a, b, c, d = [lax.stop_gradient(v) for v in corners]
    ge = lambda p, q: (p >= q) | jnp.isnan(p)
    first_row, second_row = ge(a, b), ge(c, d)
    top = ge(jnp.where(first_row, a, b), jnp.where(second_row, c, d))
    first_row, second_row, top = lax.optimization_barrier((first_row, second_row, top))
    return jnp.where(top, jnp.where(first_row, corners[0], corners[1]),
                     jnp.where(second_row, corners[2], corners[3]))


class Conv(nn.Module):
  """Stride-1 SAME convolution, ``(n, h, w, c_in) -> (n, h, w, features)``.

  The kernel is a ``(size, size, c_in, features)`` param named ``kernel`` (as in
  ``nn.Conv``), plus a ``bias`` when ``use_bias``.

  Attributes:
    impl: ``"vjp"`` — :func:`conv2d` (a convolution with a custom VJP, fast on CPU
      inside task loops and at second order; no forward mode); ``"matmul"`` — im2col
      and one matrix product, differentiated by JAX; ``"xla"`` —
      ``lax.conv_general_dilated`` differentiated by JAX; ``"auto"`` (default) —
      ``"vjp"`` on CPU, ``"xla"`` on GPU/TPU.
  """

  features: int
  size: int = 3
  impl: ConvImpl = "auto"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = resolve_conv_impl(self.impl)
    c_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.size, self.size, c_in, self.features))
    if impl == "vjp":
      y = conv2d(x, kernel)
    else:
      y = (_matmul_conv if impl == "matmul" else _xla_conv)(x, kernel, _same_pads(self.size))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
