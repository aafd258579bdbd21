"""iMAML's memory against the number of inner steps, beside second-order MAML's
(Rajeswaran et al. 2019, fig. 2): XLA's temporary buffer bytes of one compiled meta-gradient,
and its time per call.

  python benchmarks/imaml_memory.py                       # sinusoid MLP and Omniglot-shaped Conv4
  python benchmarks/imaml_memory.py --steps 5 10 25 50 100 --configs omniglot

Sinusoid: the 40-40 MLP, 25 tasks of 10 + 10 points. Omniglot-shaped: Conv4-64, 5-way 1-shot
with 15 queries per class, 4 tasks (random 28×28 inputs). iMAML uses 5 CG steps (the paper's).
Writes results/imaml_memory.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from metajax.core import Task, losses  # noqa: E402
from metajax.data import sinusoid  # noqa: E402
from metajax.learners import gradient, implicit  # noqa: E402
from metajax.models import MLP, Conv4, functional  # noqa: E402


def problem(name: str):
  """``(apply_fn, params, task batch, config kwargs)`` of a benchmark config."""
  key = jax.random.PRNGKey(0)
  if name == "sinusoid":
    model = MLP(hidden=(40, 40), out=1)
    params, apply_fn = functional(model, model.init(key, jnp.zeros((1, 1))))
    return apply_fn, params, sinusoid.sample(key, 25, 10, 10), dict(inner_lr=0.01)
  model = Conv4(num_classes=5, width=64)
  x = jax.random.uniform(key, (4, 5 * 16, 28, 28, 1))
  params, apply_fn = functional(model, model.init(key, x[0, :5]))
  y = jnp.tile(jnp.arange(5), (4, 16))
  batch = Task(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
  return apply_fn, params, batch, dict(inner_lr=0.1, loss_fn=losses.cross_entropy)


def measure(name: str, algo: str, steps: int, repeats: int) -> dict:
  apply_fn, params, batch, kwargs = problem(name)
  if algo == "imaml":
    config, grad_fn = implicit.IMAMLConfig(apply_fn, inner_steps=steps, **kwargs), implicit.meta_grad
  else:
    config, grad_fn = gradient.MAMLConfig(apply_fn, inner_steps=steps, **kwargs), gradient.meta_grad
  state = gradient.init(config, params, jax.random.PRNGKey(1))
  fn = jax.jit(lambda s, b: grad_fn(s, b, config=config))
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(state, batch))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    times.append(time.perf_counter() - t0)
  temp = compiled.memory_analysis().temp_size_in_bytes
  row = {"config": name, "algo": algo, "inner_steps": steps, "temp_mb": round(temp / 2**20, 2),
         "ms": round(1e3 * sorted(times)[len(times) // 2], 2), "compile_s": round(compile_s, 2)}
  print(row, flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["sinusoid", "omniglot"], choices=["sinusoid", "omniglot"])
  parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 25, 50, 100])
  parser.add_argument("--repeats", type=int, default=3)
  ns = parser.parse_args()
  rows = [measure(c, a, s, ns.repeats) for c in ns.configs for a in ("imaml", "maml") for s in ns.steps]
  print("wrote", save("imaml_memory", {"machine": machine(), "rows": rows}))


if __name__ == "__main__":
  main()
