"""Sinusoid regression with the MAML paper's protocol: meta-batch 25, Adam 1e-3,
inner lr 0.01, one inner step (MAML++: five), K shots and K queries in training,
up to 70k meta-steps; one model per K. Evaluation on 1,000 new tasks with 100
query points each: mean MSE with its 95% CI after 1 inner step (and 10 for MAML).

  python benchmarks/sinusoid_reproduction.py                        # the full table
  python benchmarks/sinusoid_reproduction.py --steps 2000 --algos maml   # a quick look
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import TEST_SEED, machine, save  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.harness.args import TrainArgs  # noqa: E402
from metajax.harness.run import NonFiniteLoss, evaluate, train  # noqa: E402

# Inner steps in training, and the inner-step counts evaluated.
SETUPS = {"maml": (1, (1, 10)), "meta-sgd": (1, (1,)), "maml++": (5, (5,))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algos", nargs="+", default=list(SETUPS), choices=list(SETUPS))
  parser.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20])
  parser.add_argument("--steps", type=int, default=70_000)
  parser.add_argument("--eval-tasks", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--clip-grad-norm", type=float, default=None,
                      help="clip the outer gradient (recorded in every row)")
  parser.add_argument("--out", default="sinusoid_reproduction")
  ns = parser.parse_args()
  rows = []
  for algo in ns.algos:
    inner_steps, eval_steps = SETUPS[algo]
    for k in ns.shots:
      args = TrainArgs(algo=algo, steps=ns.steps, shots=k, queries=k, inner_steps=inner_steps,
                       seed=ns.seed, chunk=2000, clip_grad_norm=ns.clip_grad_norm)
      try:
        trained = train(args)
      except NonFiniteLoss as err:
        rows.append({"algo": algo, "shots": k, "train_steps": ns.steps, "clip_grad_norm": ns.clip_grad_norm,
                     "diverged_at_step": err.step})
        print(f"{algo:9s} K={k:2d} diverged: {err}", flush=True)
        continue
      for steps in eval_steps:
        metrics = evaluate(trained.problem, trained.state, ns.eval_tasks, TEST_SEED + ns.seed, steps,
                           chunk=ns.eval_tasks)
        mse, ci = mean_and_ci95(metrics["loss"])
        row = {"algo": algo, "shots": k, "train_steps": ns.steps, "eval_inner_steps": steps,
               "clip_grad_norm": ns.clip_grad_norm,
               "mse": mse, "ci95": ci, "train_time_s": round(trained.train_time_s, 1)}
        rows.append(row)
        print(f"{algo:9s} K={k:2d} eval steps={steps:2d}  MSE {mse:.3f} ± {ci:.3f}  "
              f"(trained {ns.steps} steps in {trained.train_time_s:.0f} s)", flush=True)
  print("saved", save(ns.out, {"machine": machine(), "results": rows}))


if __name__ == "__main__":
  main()
