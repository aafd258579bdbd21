"""The XLA:CPU setting that metajax's CPU numbers are measured with.

jaxlib 0.10 hands each convolution to a YNNPACK fusion by default. With
:func:`metajax.models.conv2d` (the CPU default) XLA's Eigen convolutions are
faster: a Conv4 MAML meta-step took 7–8% less time on both the Omniglot- and
mini-ImageNet-shaped configs (``benchmarks/RESULTS.md``). XLA reads its flags
once, when JAX first initialises a backend, so this cannot be switched per call:
``metajax`` (the CLI) and ``benchmarks/`` apply it at start-up; research code
calls :func:`use_fast_cpu_convolutions` before its first JAX computation.
"""
from __future__ import annotations

import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def use_fast_cpu_convolutions(*, warn: bool = True) -> bool:
  """Adds :data:`FLAG` to ``XLA_FLAGS`` for this process, if JAX has not started yet.

  Leaves ``XLA_FLAGS`` alone when it already sets ``xla_cpu_experimental_ynn_fusion_type``
  (an explicit choice wins), and on jaxlib older than 0.10 (the flag was measured on
  0.10.2; XLA aborts the process on flags it does not know). Affects only the CPU backend.

  Args:
    warn: warn when it comes too late (JAX already started) to take effect.

  Returns:
    whether the flag is in effect for this process.
  """
  import jaxlib
  from jax._src import xla_bridge  # no public API tells whether backends exist yet

  current = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in current:
    return FLAG in current.split()
  if tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < (0, 10):
    return False
  if xla_bridge.backends_are_initialized():
    if warn:
      warnings.warn("use_fast_cpu_convolutions: JAX backends are already initialised; call it before "
                    "the first JAX computation for it to take effect", stacklevel=2)
    return False
  os.environ["XLA_FLAGS"] = f"{current} {FLAG}".strip()
  return True
