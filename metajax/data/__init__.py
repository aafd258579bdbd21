"""Task families: each samples :class:`metajax.core.Task` batches from a PRNG key."""
from metajax.data import cifar100
from metajax.data import cub
from metajax.data import episodes
from metajax.data import folders
from metajax.data import images
from metajax.data import mini_imagenet
from metajax.data import omniglot
from metajax.data import sinusoid
from metajax.data import tiered_imagenet
from metajax.data.images import ImageClasses

__all__ = ["ImageClasses", "cifar100", "cub", "episodes", "folders", "images", "mini_imagenet", "omniglot",
           "sinusoid", "tiered_imagenet"]
