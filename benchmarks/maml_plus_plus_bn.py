"""MAML++'s per-step BatchNorm running statistics on Omniglot: one meta-training run, its state
evaluated twice, normalising with the per-step running averages (Antoniou et al. 2019, "BNRS")
and with each batch's own statistics (MAML's transductive BatchNorm).

  python benchmarks/maml_plus_plus_bn.py --steps 200 --tasks 300

Prints and saves ``results/maml_plus_plus_bn.json``. The data folder is --data-dir or
$METAJAX_DATA (default ../shared/data).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, machine, save  # noqa: E402

from metajax.core import losses, mean_and_ci95  # noqa: E402
from metajax.data import episodes, omniglot  # noqa: E402
from metajax.harness.problem import outer_optimizer  # noqa: E402
from metajax.harness.args import TrainArgs  # noqa: E402
from metajax.learners import RunningStats, gradient, is_batch_norm  # noqa: E402
from metajax.learners.forward import accuracy_metrics  # noqa: E402
from metajax.models import Conv4, functional_with_stats  # noqa: E402



def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--meta-batch", type=int, default=8)
  parser.add_argument("--inner-steps", type=int, default=2)
  parser.add_argument("--inner-lr", type=float, default=0.4)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--tasks", type=int, default=300, help="test tasks (5-way 1-shot, 15 queries)")
  parser.add_argument("--data-dir", default=os.environ.get("METAJAX_DATA", str(DEFAULT_DATA)))
  ns = parser.parse_args()

  train, test = (jax.numpy.asarray(omniglot.load(s, ns.data_dir).images) for s in ("trainval", "test"))
  model = Conv4(num_classes=5, width=ns.width)
  params, stats, apply_fn = functional_with_stats(model, model.init(jax.random.PRNGKey(0), train[:1, 0, ..., None]))
  config = gradient.MAMLConfig(
      apply_fn, loss_fn=losses.cross_entropy, metrics_fn=accuracy_metrics,
      optimizer=outer_optimizer(TrainArgs(dataset="omniglot", algo="maml++")), inner_steps=ns.inner_steps,
      inner_lr=ns.inner_lr, inner_lr_mode="per_step", multi_step_loss=True, per_step_filter=is_batch_norm,
      running_stats=RunningStats(lambda: stats))
  state = gradient.init(config, params, jax.random.PRNGKey(1))
  step = jax.jit(gradient.meta_step, static_argnames="config")
  sample = jax.jit(lambda k: episodes.sample(k, train, num_tasks=ns.meta_batch, ways=5, shots=1, queries=15))
  start = time.perf_counter()
  for i in range(ns.steps):
    state, metrics = step(state, sample(jax.random.PRNGKey(100 + i)), config=config)
  train_seconds = time.perf_counter() - start

  tasks = episodes.sample(jax.random.PRNGKey(7), test, num_tasks=ns.tasks, ways=5, shots=1, queries=15)
  batch_config = dataclasses.replace(config, running_stats=None, apply_fn=lambda p, x: apply_fn(p, x, None)[0])
  batch_state = state._replace(meta_params={k: v for k, v in state.meta_params.items() if k != "bn_stats"})
  evaluate = jax.jit(gradient.evaluate, static_argnames="config")
  rows = {}
  for name, (cfg, st) in {"running_stats": (config, state), "batch_stats": (batch_config, batch_state)}.items():
    out = evaluate(st, tasks, config=cfg)
    mean, ci = mean_and_ci95(out["accuracy"])
    rows[name] = {"accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2),
                  "query_loss": float(np.mean(out["loss"])), "query_loss_before": float(np.mean(out["loss_before"]))}
    print(f"{name}: {rows[name]['accuracy']:.2f} ± {rows[name]['ci95']:.2f} % "
          f"(query loss {rows[name]['query_loss_before']:.3f} -> {rows[name]['query_loss']:.3f})")
  print(f"last training accuracy {float(metrics['accuracy']):.3f} after {ns.steps} steps, {train_seconds:.0f} s")
  save("maml_plus_plus_bn", {"args": vars(ns), "train_seconds": train_seconds,
                             "train_accuracy": float(metrics["accuracy"]), "eval": rows, "machine": machine()})


if __name__ == "__main__":
  main()
