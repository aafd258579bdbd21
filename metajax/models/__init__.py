"""Flax modules used as learners, and the adapter to pure ``apply`` functions."""
from metajax.models.conv4 import Conv4, RelationModule
from metajax.models.functional import functional, functional_with_stats
from metajax.models.layers import Conv, conv2d, im2col, max_pool_2x2, resolve_conv_impl
from metajax.models.mlp import MLP
from metajax.models import recurrent
from metajax.models.resnet12 import ResNet12

__all__ = ["Conv", "Conv4", "MLP", "RelationModule", "ResNet12", "conv2d", "functional", "functional_with_stats", "im2col", "max_pool_2x2", "recurrent",
           "resolve_conv_impl"]
