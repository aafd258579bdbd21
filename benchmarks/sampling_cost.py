"""Cost of drawing a task batch on device (Omniglot, Vinyals trainval) against a
MAML meta-step on that batch (second order, the Omniglot-shaped config).

  python benchmarks/sampling_cost.py [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, call_seconds, machine, save  # noqa: E402

import metajax  # noqa: E402
from metajax import maml  # noqa: E402
from metajax.core import losses  # noqa: E402
from metajax.data import episodes, omniglot  # noqa: E402


def _time(fn, *args, repeats=5):
  """The fastest of ``repeats`` calls of ``fn(*args)``, in seconds."""
  return call_seconds(lambda: fn(*args), repeats)[0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
  ns = parser.parse_args()
  images = jnp.asarray(omniglot.load("trainval", ns.data_dir).images)
  rows = []
  for ways, shots, tasks in ((5, 1, 32), (5, 5, 32), (20, 1, 16), (20, 5, 16)):
    sample = jax.jit(lambda k, im: episodes.sample(k, im, num_tasks=tasks, ways=ways, shots=shots, queries=15))
    key = jax.random.PRNGKey(0)
    sample_s = _time(sample, key, images)
    batch = sample(key, images)
    model = metajax.models.Conv4(num_classes=ways, width=64)
    params, apply_fn = metajax.models.functional(model, model.init(key, batch.x_support[0]))
    config = maml.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, optimizer=optax.adam(1e-3), inner_lr=0.4)
    state = maml.init(config, params, key)
    step_s = _time(lambda s, b: maml.meta_step(s, b, config=config)[0], state, batch, repeats=2)
    row = {"ways": ways, "shots": shots, "queries": 15, "meta_batch": tasks, "sample_ms": sample_s * 1e3,
           "meta_step_ms": step_s * 1e3, "ratio": sample_s / step_s}
    rows.append(row)
    print(f"{ways}-way {shots}-shot, {tasks} tasks: sampling {sample_s * 1e3:.2f} ms, meta-step "
          f"{step_s * 1e3:.0f} ms ({100 * sample_s / step_s:.2f}% of a step)", flush=True)
  print("saved", save("sampling_cost", {"machine": machine(), "results": rows}))


if __name__ == "__main__":
  main()
