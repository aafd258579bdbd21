"""Task families: each samples :class:`metajax.core.Task` batches from a PRNG key."""
from metajax.data import sinusoid

__all__ = ["sinusoid"]
