"""Task families: each samples :class:`metajax.core.Task` batches from a PRNG key."""
from metajax.data import episodes
from metajax.data import images
from metajax.data import omniglot
from metajax.data import sinusoid
from metajax.data.omniglot import ImageClasses

__all__ = ["ImageClasses", "episodes", "images", "omniglot", "sinusoid"]
