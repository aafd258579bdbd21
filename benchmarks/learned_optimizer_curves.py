"""Loss curves of the learned LSTM optimizer against SGD and Adam on held-out random
quadratics (Andrychowicz et al. 2016, §3.1: f(θ) = mean((Wθ − y)²), d = 10).

The LSTM optimizer (2 layers × 20, the paper's net) is meta-trained with truncated
BPTT (horizon 100, truncation 20) on problems drawn from the same distribution;
SGD and Adam get their best learning rate from a grid, picked on the held-out
problems themselves (which favours them). Writes results/learned_optimizer.json
and results/learned_optimizer.png.

  python benchmarks/learned_optimizer_curves.py --meta-steps 300
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import TEST_SEED, machine, save  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metajax.core import losses  # noqa: E402
from metajax.data import quadratic  # noqa: E402
from metajax.core import train_steps  # noqa: E402
from metajax.learners import learned_opt as lo  # noqa: E402

GRID = (0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 1.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--meta-steps", type=int, default=300)
  parser.add_argument("--problems", type=int, default=200, help="held-out problems")
  parser.add_argument("--horizon", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  ns = parser.parse_args()
  net = lo.LSTMOptimizerNet()
  config = lo.LearnedOptimizerConfig(net, quadratic.apply, lambda k: jax.random.normal(k, (10,)),
                                     horizon=ns.horizon, truncation=20, optimizer=optax.adam(3e-3))
  key = jax.random.PRNGKey(ns.seed)
  state = lo.init(config, net.init_params(key), key)
  t0 = time.perf_counter()
  state, metrics = train_steps(state, meta_step=functools.partial(lo.meta_step, config=config),
                               sample_fn=functools.partial(quadratic.sample, num_tasks=16), num_steps=ns.meta_steps)
  jax.block_until_ready(state)
  meta_train_s = time.perf_counter() - t0

  held_out = quadratic.sample(jax.random.PRNGKey(TEST_SEED + ns.seed), ns.problems)
  starts = jax.vmap(config.init_fn)(jax.random.split(jax.random.PRNGKey(1), ns.problems))

  def curve(opt):
    run = lambda p, t: lo.optimize(opt, p, lambda q: losses.mse(quadratic.apply(q, t.x_support), t.y_support),
                                   ns.horizon)[1]
    return np.asarray(jax.vmap(run)(starts, held_out)).mean(0)

  curves = {"learned LSTM": curve(lo.lstm_optimizer(net, state.meta_params["params"]))}
  chosen = {}
  for name, make in (("SGD", optax.sgd), ("Adam", optax.adam)):
    by_lr = {lr: curve(make(lr)) for lr in GRID}
    finite = {lr: c for lr, c in by_lr.items() if np.isfinite(c[-1])}
    best = min(finite, key=lambda lr: finite[lr][-1])
    chosen[name] = best
    curves[f"{name} (lr {best})"] = finite[best]
  for name, c in curves.items():
    print(f"{name:18s} loss after 0/10/50/{ns.horizon} steps: {c[0]:.3f} / {c[10]:.4f} / {c[50]:.4f} / {c[-1]:.5f}")
  print(f"meta-training: {ns.meta_steps} meta-steps ({ns.meta_steps * ns.horizon // 20} net updates) in "
        f"{meta_train_s:.0f} s; final train loss {float(metrics['loss'][-1]):.4f}")

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, c in curves.items():
    ax.semilogy(np.arange(len(c)), c, label=name)
  ax.set_xlabel("optimizer step")
  ax.set_ylabel(f"mean loss over {ns.problems} held-out quadratics")
  ax.set_title("Learned LSTM optimizer vs tuned SGD and Adam")
  ax.legend()
  fig.tight_layout()
  out = Path(__file__).parent / "results" / "learned_optimizer.png"
  fig.savefig(out, dpi=100)
  print(f"wrote {out}")
  save("learned_optimizer", {"machine": machine(), "args": vars(ns), "meta_train_s": meta_train_s,
                             "best_lr": chosen, "curves": {k: [float(x) for x in v] for k, v in curves.items()}})


if __name__ == "__main__":
  main()
