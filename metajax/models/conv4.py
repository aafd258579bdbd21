"""Conv4, the four-block few-shot backbone of the MAML / ProtoNet papers, and the
Relation network's convolutional relation module."""
from __future__ import annotations

from typing import Literal, Optional, get_args

import flax.linen as nn
import jax

from metajax.models.layers import Conv, ConvImpl, Padding, max_pool_2x2

Downsample = Literal["max_pool", "stride"]
DOWNSAMPLES = get_args(Downsample)
Features = Literal["flatten", "mean", "maps"]
FEATURES = get_args(Features)
VectorFeatures = Literal["flatten", "mean"]  # the ``features`` that give vectors
VECTOR_FEATURES = get_args(VectorFeatures)
ConvInit = Literal["lecun", "torch", "torch_legacy", "sung"]
CONV_INITS = get_args(ConvInit)
Initializer = nn.initializers.Initializer


def conv_block_init(name: ConvInit) -> tuple[Initializer, Initializer]:
  """How a conv block starts, ``(conv kernel, BatchNorm scale)`` initializers: ``"lecun"``, LeCun
  normal kernels (std 1/√fan-in, flax's default) and scales 1; ``"torch"``, PyTorch's defaults:
  ``Conv2d``'s kernels uniform on ±1/√fan-in (``kaiming_uniform_(a=√5)``, std 1/√(3·fan-in)) and
  scales 1; ``"torch_legacy"``, PyTorch's before 1.0 (pytorch/pytorch#12259), which 2017 codes ran
  on (ProtoNet's, Snell et al.): the same kernels and BatchNorm scales drawn from U(0, 1); ``"sung"``,
  the Relation network's code (Sung et al. 2018, ``weights_init``): kernels normal with variance
  2/(9·out channels), He's on the fan-out, and scales 1."""
  if name not in CONV_INITS:
    raise ValueError(f"unknown conv_init {name!r}; choose one of {CONV_INITS}")
  if name == "lecun":
    return nn.initializers.lecun_normal(), nn.initializers.ones
  if name == "sung":
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal"), nn.initializers.ones
  kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  return kernel, nn.initializers.uniform(1.0) if name == "torch_legacy" else nn.initializers.ones


class Conv4(nn.Module):
  """``(n, h, w, c) -> (n, num_classes)``, or ``(n, features)`` embeddings when ``num_classes`` is None.

  Four blocks of 3×3 conv (``width`` channels, no bias: BatchNorm's shift
  replaces it) → BatchNorm → ReLU → 2×2 max-pool; or, with ``downsample="stride"``,
  stride-2 convolutions and no pooling, the Omniglot network of MAML (Finn et al. 2017,
  their code) and Reptile (Nichol et al. 2018): 28×28 → 14, 7, 4, 2, at a quarter of the
  convolution work.
  BatchNorm normalises with the statistics of the batch it is given, as MAML does:
  inside the inner loop that is the support set of one task, at the query step the
  query set; ``use_running_average=True`` normalises with the ``batch_stats``
  collection instead (MAML++'s running statistics). Use
  :func:`metajax.models.functional` to get a pure ``apply(params, x)``, or
  :func:`metajax.models.functional_with_stats` for running statistics.

  Attributes:
    num_classes: output logits; ``None`` returns the features.
    width: channels of every conv block (64 for Omniglot, 32 for mini-ImageNet).
    pooled_blocks: how many of the blocks (the first ones) halve the resolution; the
      Relation network's embedding pools only in the first two (Sung et al., 2018).
    downsample: how those blocks halve it, ``"max_pool"`` (2×2, after the ReLU) or
      ``"stride"`` (the block's convolution takes stride 2, SAME: ``⌈h/2⌉``).
    features: what the last block's ``(n, h', w', width)`` maps become: ``"flatten"``,
      ``(n, h'·w'·width)`` vectors (Reptile's code); ``"mean"``, ``(n, width)`` averages over
      space (MAML's Omniglot code, ``tf.reduce_mean(hidden4, [1, 2])``); or ``"maps"``, the
      maps themselves (``num_classes=None`` only). Max-pooled 28×28 inputs end at 1×1, where
      the three hold the same values.
    conv_impl: see :class:`metajax.models.Conv` (``"auto"``: fast custom-VJP convolution on
      CPU, XLA's on GPU/TPU; pass ``"xla"`` for forward-mode ``jax.jvp``/``jax.jacfwd``).
    conv_init: how the conv blocks start (:func:`conv_block_init`): ``"lecun"``, ``"torch"``,
      ``"torch_legacy"`` or ``"sung"``.
    unpadded_blocks: how many of the blocks (the first ones) convolve without padding (VALID,
      ``h - 2``; ``downsample="max_pool"`` only): the Relation network's embedding has two
      (Sung et al., 2018, their code), 28×28 → 26, 13, 11, 5 → 5×5 maps.
  """

  num_classes: Optional[int] = 5
  width: int = 64
  conv_impl: ConvImpl = "auto"
  pooled_blocks: int = 4
  features: Features = "flatten"
  downsample: Downsample = "max_pool"
  conv_init: ConvInit = "lecun"
  unpadded_blocks: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
    for name in ("pooled_blocks", "unpadded_blocks"):
      value = getattr(self, name)
      if type(value) is not int or not 0 <= value <= 4:
        raise ValueError(f"Conv4: {name} must be an int in [0, 4], got {value!r}")
    if self.unpadded_blocks and self.downsample == "stride":
      raise ValueError("Conv4: unpadded_blocks needs downsample='max_pool' (unpadded convolutions take stride 1)")
    if self.downsample not in DOWNSAMPLES:
      raise ValueError(f"Conv4: unknown downsample {self.downsample!r}; choose one of {DOWNSAMPLES}")
    if self.features not in FEATURES:
      raise ValueError(f"Conv4: unknown features {self.features!r}; choose one of {FEATURES}")
    if self.num_classes is not None and self.features == "maps":
      raise ValueError("Conv4: features='maps' returns feature maps and needs num_classes=None")
    kernel_init, scale_init = conv_block_init(self.conv_init)
    for i in range(4):
      halve = i < self.pooled_blocks
      x = conv_block(x, self.width, self.conv_impl, pool=halve and self.downsample == "max_pool",
                     stride=2 if halve and self.downsample == "stride" else 1, index=i,
                     padding="VALID" if i < self.unpadded_blocks else "SAME",
                     use_running_average=use_running_average, kernel_init=kernel_init, scale_init=scale_init)
      if 0 in x.shape[1:3]:
        raise ValueError(f"Conv4: block {i} leaves {x.shape[1]}x{x.shape[2]} maps; the input is too small for "
                         f"{self.pooled_blocks} pooled and {self.unpadded_blocks} unpadded blocks")
    if self.features == "maps":
      return x
    x = x.mean(axis=(1, 2)) if self.features == "mean" else x.reshape(x.shape[0], -1)
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, name="head")(x)


def conv_block(x: jax.Array, width: int, impl: ConvImpl, *, pool: bool, index: int, stride: int = 1,
               padding: Padding = "SAME", use_running_average: bool = False,
               kernel_init: Initializer = nn.initializers.lecun_normal(),
               scale_init: Initializer = nn.initializers.ones) -> jax.Array:
  """3×3 conv (no bias; ``stride``, ``padding``; kernel from ``kernel_init``) → BatchNorm (scale from
  ``scale_init``) → ReLU [→ 2×2 max-pool], inside a compact module, with parameters named
  ``conv_<index>`` and ``norm_<index>``. BatchNorm uses the batch's statistics (and, with
  ``momentum=0``, leaves them as its updated ``batch_stats``), or with ``use_running_average``
  the stored ones."""
  x = Conv(width, impl=impl, use_bias=False, stride=stride, kernel_init=kernel_init, padding=padding,
           name=f"conv_{index}")(x)
  norm = nn.BatchNorm(momentum=0.0, scale_init=scale_init, name=f"norm_{index}")
  x = nn.relu(norm(x, use_running_average=use_running_average))
  return max_pool_2x2(x) if pool else x


class RelationModule(nn.Module):
  """The Relation network's relation module (Sung et al., 2018, fig. 2):
  ``(m, h, w, 2c)`` concatenated feature-map pairs -> ``(m,)`` pre-sigmoid scores.

  Two conv blocks (``width`` channels, BatchNorm, ReLU, 2×2 max-pool), then
  ``hidden``-unit ReLU and one linear output. Maps smaller than 2×2 skip the pooling
  (Omniglot's 7×7 maps become 3×3, then 1×1; the paper's 5×5, from an embedding with
  ``unpadded_blocks=2``, become 2×2, then 1×1).

  Attributes:
    width: channels of the two conv blocks (64 in the paper).
    hidden: units of the fully connected layer (8 in the paper).
    conv_impl: see :class:`metajax.models.Conv`.
    conv_init: how it starts: its conv blocks as :func:`conv_block_init` says; with ``"sung"`` its
      two linear layers too, as their code's (weights normal with std 0.01, biases 1), else
      flax's defaults (LeCun-normal weights, biases 0).
  """

  width: int = 64
  hidden: int = 8
  conv_impl: ConvImpl = "auto"
  conv_init: ConvInit = "lecun"

  @nn.compact
  def __call__(self, pairs: jax.Array) -> jax.Array:
    if pairs.ndim != 4:
      raise ValueError(f"RelationModule: expected (m, h, w, 2c) feature-map pairs, got shape {pairs.shape}")
    kernel_init, scale_init = conv_block_init(self.conv_init)
    dense = (dict(kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.ones)
             if self.conv_init == "sung" else {})
    x = pairs
    for i in range(2):
      x = conv_block(x, self.width, self.conv_impl, pool=min(x.shape[1:3]) >= 2, index=i,
                     kernel_init=kernel_init, scale_init=scale_init)
    x = nn.relu(nn.Dense(self.hidden, name="hidden", **dense)(x.reshape(x.shape[0], -1)))
    return nn.Dense(1, name="out", **dense)(x)[:, 0]
