"""Repository-wide pytest setup, inherited by subprocesses and by the notebooks' kernels (nbmake):

- notebooks execute at small size unless ``METAJAX_SMALL`` is already set;
- XLA skips its expensive backend optimisations (``JAX_DISABLE_MOST_OPTIMIZATIONS``, JAX's own
  switch for when compiling costs more than running) unless the variable is already set. The
  suite's tiny shapes make it compile-bound: on 2 cores the Conv4 BatchNorm strategies test takes
  42 instead of 62 CPU-seconds. Runs outside pytest (benchmarks, the CLI) are not affected;
- XLA:CPU emits its fusions with its older, elemental emitters (:data:`LEGACY_FUSIONS`) unless
  ``XLA_FLAGS`` already chooses, and where this jaxlib knows the flag: at that optimisation level
  they compile a tiny second-order Conv4 meta-gradient 6x faster (2.3 s against 14 s, beside a
  training run on 2 cores) and run it as fast (benchmarks/RESULTS.md, "XLA:CPU's fusion emitters").
"""
import os
import subprocess
import sys

LEGACY_FUSIONS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
  """Whether XLA starts with ``flags`` (it aborts the process on a flag it does not know)."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  probe = [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"]
  return subprocess.run(probe, env=env, capture_output=True).returncode == 0


os.environ.setdefault("METAJAX_SMALL", "1")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_flags = os.environ.get("XLA_FLAGS", "")
_with_legacy = f"{_flags} {LEGACY_FUSIONS}".strip()
if "xla_cpu_use_fusion_emitters" not in _flags and _xla_accepts(_with_legacy):
  os.environ["XLA_FLAGS"] = _with_legacy
