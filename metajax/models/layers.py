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
from typing import Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["auto", "vjp", "matmul", "xla"]
CONV_IMPLS = get_args(ConvImpl)
Padding = Literal["SAME", "VALID"]
PADDINGS = get_args(Padding)
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_IM2COL_MAX_CHANNELS = 4  # forward by im2col + matmul up to this many input channels (RESULTS.md)
Pads = tuple[tuple[int, int], tuple[int, int]]


def _strided_same_pads(h: int, w: int, size: int, stride: int) -> Pads:
  """SAME padding of a ``stride``-strided ``size×size`` window (as TensorFlow's and ``lax``'s
  ``"SAME"``: ``ceil(h / stride)`` outputs, the odd pixel of padding at the end)."""
  return tuple(lax.padtype_to_pads((h, w), (size, size), (stride, stride), "SAME"))


def _pads(h: int, w: int, size: int, stride: int, padding: Padding) -> Pads:
  """``padding``'s pads of a ``stride``-strided ``size×size`` window over ``h×w`` maps: SAME
  (:func:`_strided_same_pads`), or VALID (none; stride 1, maps at least the window's size)."""
  if padding not in PADDINGS:
    raise ValueError(f"unknown padding {padding!r}; choose one of {PADDINGS}")
  if padding == "SAME":
    return _strided_same_pads(h, w, size, stride)
  if stride != 1:
    raise ValueError(f"VALID padding is for stride 1, got stride {stride}")
  if min(h, w) < size:
    raise ValueError(f"a VALID {size}x{size} convolution of {h}x{w} maps leaves nothing")
  return (0, 0), (0, 0)


def _patches(x: jax.Array, size: int, pads: Pads, stride: int = 1) -> jax.Array:
  """``(n, h, w, c) -> (n, h', w', size*size*c)`` padded patches every ``stride`` pixels,
  ordered ``(dy, dx, c)``. Strided slices and pads only, so JAX differentiates it at any
  order without a convolution (the transpose of a strided slice is an interior pad)."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  h = (xp.shape[1] - size) // stride + 1
  w = (xp.shape[2] - size) // stride + 1
  n, _, _, c = xp.shape
  window = lambda dy, dx: lax.slice(xp, (0, dy, dx, 0), (n, dy + stride * (h - 1) + 1, dx + stride * (w - 1) + 1, c),
                                    (1, stride, stride, 1))
  return jnp.concatenate([window(dy, dx) for dy in range(size) for dx in range(size)], axis=-1)


def im2col(x: jax.Array, size: int) -> jax.Array:
  """SAME-padded ``size×size`` patches: ``(n, h, w, c) -> (n, h, w, size*size*c)``.

  The patch axis is ordered ``(dy, dx, c)``, matching a ``(size, size, c, out)`` kernel.
  """
  return _patches(x, size, _strided_same_pads(x.shape[1], x.shape[2], size, 1))


def _transposed(kernel: jax.Array) -> jax.Array:
  """The kernel of the input-gradient convolution: spatially flipped, in/out swapped."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _transposed_pads(pads: Pads, size: int) -> Pads:
  """The padding of the input-gradient convolution of a stride-1 ``size×size`` one padded by
  ``pads`` (for SAME, ``pads`` swapped end for end; for VALID, ``size - 1`` on every side)."""
  return tuple((size - 1 - lo, size - 1 - hi) for lo, hi in pads)


def _matmul_conv(x: jax.Array, kernel: jax.Array, pads: Pads, stride: int = 1) -> jax.Array:
  """The convolution as im2col patches times the flattened kernel."""
  return _patches(x, kernel.shape[0], pads, stride) @ kernel.reshape(-1, kernel.shape[-1])


def _xla_conv(x: jax.Array, kernel: jax.Array, pads: Pads, stride: int = 1) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMENSIONS)


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
  size = kernel.shape[0]
  return _conv(g, _transposed(kernel), _transposed_pads(pads, size)), _weight_grad(x, g, size, pads)


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
  return _conv(g, _transposed(dw_bar), _transposed_pads(pads, size)), _conv(x, dw_bar, pads)


_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = "SAME") -> jax.Array:
  """SAME convolution ``(n, h, w, c_in), (k, k, c_in, c_out) -> (n, ⌈h/s⌉, ⌈w/s⌉, c_out)``, or
  VALID (stride 1) ``-> (n, h - k + 1, w - k + 1, c_out)``.

  Equal, up to float rounding, to ``lax.conv_general_dilated(x, kernel, (s, s), padding,
  ("NHWC", "HWIO", "NHWC"))`` computed in ``jnp.result_type(x, kernel)``. At stride 1 the
  forward pass is XLA's convolution, or im2col and one matrix product for 1×1 kernels and at
  most four input channels (measured faster, ``benchmarks/RESULTS.md``), with the custom VJP
  described in the module docstring: reverse mode at any order; forward mode (``jax.jvp``,
  ``jax.jacfwd``) is not defined for it — use ``impl="xla"`` there. Strided, it is strided
  im2col and one matrix product (a quarter of the patches at stride 2), differentiated by JAX
  in either mode: its derivatives are matrix products, slices and pads, never a convolution.
  """
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or x.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"conv2d: need x (n, h, w, c) and a square kernel (k, k, c, out); "
                     f"got x {x.shape}, kernel {kernel.shape}")
  if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
    raise ValueError(f"conv2d: stride must be a positive int, got {stride!r}")
  dtype = jnp.result_type(x, kernel)
  x, kernel, size = x.astype(dtype), kernel.astype(dtype), kernel.shape[0]
  pads = _pads(x.shape[1], x.shape[2], size, stride, padding)
  return _conv(x, kernel, pads) if stride == 1 else _matmul_conv(x, kernel, pads, stride)


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
  """SAME convolution, ``(n, h, w, c_in) -> (n, ⌈h/stride⌉, ⌈w/stride⌉, features)``, or VALID
  (stride 1), ``(n, h - size + 1, w - size + 1, features)``.

  The kernel is a ``(size, size, c_in, features)`` param named ``kernel`` (as in
  ``nn.Conv``), plus a ``bias`` when ``use_bias``.

  Attributes:
    impl: ``"vjp"`` — :func:`conv2d` (a convolution with a custom VJP, fast on CPU
      inside task loops and at second order; no forward mode); ``"matmul"`` — im2col
      and one matrix product, differentiated by JAX; ``"xla"`` —
      ``lax.conv_general_dilated`` differentiated by JAX; ``"auto"`` (default) —
      ``"vjp"`` on CPU, ``"xla"`` on GPU/TPU. Strided, ``"vjp"`` is ``"matmul"``
      (:func:`conv2d`).
    stride: the window's step in both spatial axes (the MAML and Reptile Omniglot
      networks downsample by stride-2 convolutions instead of max-pooling).
    kernel_init: the kernel's initializer (``nn.Conv``'s default, LeCun normal).
    padding: ``"SAME"`` (zero padding, the default) or ``"VALID"`` (none: only the windows
      inside the image; stride 1), which the Relation network's embedding has in its first
      two blocks (Sung et al., 2018).
  """

  features: int
  size: int = 3
  impl: ConvImpl = "auto"
  use_bias: bool = True
  stride: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  padding: Padding = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = resolve_conv_impl(self.impl)
    c_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.size, self.size, c_in, self.features))
    if impl == "vjp":
      y = conv2d(x, kernel, self.stride, self.padding)
    else:
      pads = _pads(x.shape[1], x.shape[2], self.size, self.stride, self.padding)
      y = (_matmul_conv if impl == "matmul" else _xla_conv)(x, kernel, pads, self.stride)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
