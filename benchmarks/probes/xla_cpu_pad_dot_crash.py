"""Probe: does this jaxlib's XLA:CPU still segfault on the sum of two padded halves, a reduction's
and a matrix product's? That is the gradient of slicing one batch of embeddings into support and
query rows: ``metajax.learners.prototypical`` first did so (commit 1f30027) and crashed at Omniglot's
60-way 5-shot 5-query episodes, inside a YNNPACK dot kernel (jaxlib 0.10.2), with or without
``metajax.core.use_fast_cpu_convolutions``; its prototypes now weight all rows instead.

  python benchmarks/probes/xla_cpu_pad_dot_crash.py [--rows 100 250 300 600]

Runs ``pad(a.sum(1), (n, 0)) + pad(b @ c, (0, n))`` (``a (n, 60, 64)``, ``b (n, 60)``, ``c (60, 64)``)
jitted, each ``n`` in its own process; prints and writes ``results/xla_cpu_pad_dot_crash.json``
(per ``n``: the exit code, -11 for a segfault, and the result when it ran)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import sys, jax, jax.numpy as jnp
n = int(sys.argv[1])
a, b, c = jnp.ones((n, 60, 64)), jnp.ones((n, 60)), jnp.ones((60, 64))
f = lambda a, b, c: jnp.pad(a.sum(1), ((n, 0), (0, 0))) + jnp.pad(b @ c, ((0, n), (0, 0)))
print(float(jax.jit(f)(a, b, c).sum()))
"""


def probe(rows: int) -> dict:
  """The program at ``rows``, in a fresh process: its exit code and printed sum (expected ``2 * 60 * 64 * rows``)."""
  done = subprocess.run([sys.executable, "-c", PROGRAM, str(rows)], capture_output=True, text=True, timeout=300)
  out = done.stdout.strip().splitlines()
  return {"rows": rows, "returncode": done.returncode, "sum": float(out[-1]) if done.returncode == 0 else None,
          "expected": 2 * 60 * 64 * rows}


def main() -> None:
  import jax
  import jaxlib
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, nargs="+", default=[100, 250, 300, 600])
  args = parser.parse_args()
  results = [probe(n) for n in args.rows]
  for r in results:
    print(f"n={r['rows']}: " + ("segfault" if r["returncode"] == -11 else f"exit {r['returncode']}, sum {r['sum']}"))
  out = Path(__file__).parents[1] / "results" / "xla_cpu_pad_dot_crash.json"
  out.write_text(json.dumps({"jax": jax.__version__, "jaxlib": jaxlib.__version__, "results": results}, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
