"""Repository-wide pytest setup, inherited by subprocesses and by the notebooks' kernels (nbmake):

- notebooks execute at small size unless ``METAJAX_SMALL`` is already set;
- XLA skips its expensive backend optimisations (``JAX_DISABLE_MOST_OPTIMIZATIONS``, JAX's own
  switch for when compiling costs more than running) unless the variable is already set. The
  suite's tiny shapes make it compile-bound: on 2 cores the Conv4 BatchNorm strategies test takes
  42 instead of 62 CPU-seconds. Runs outside pytest (benchmarks, the CLI) are not affected.
"""
import os

os.environ.setdefault("METAJAX_SMALL", "1")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
