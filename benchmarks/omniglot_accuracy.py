"""Few-shot accuracy on full Omniglot (Vinyals split: meta-train on trainval,
test on test), with a learning curve (accuracy on held-out test tasks against
meta-steps and wall time) and a final mean accuracy ± 95% CI over 600 test tasks.

  python benchmarks/omniglot_accuracy.py --algo maml --ways 5 --shots 1 --steps 600
  python benchmarks/omniglot_accuracy.py --algo fomaml --ways 20 --shots 1 --meta-batch 16
  python benchmarks/omniglot_accuracy.py --algo protonet --meta-batch 4 --steps 3000 --curve-every 500
  python benchmarks/omniglot_accuracy.py --algo maml --steps 100000 --budget-minutes 39.4 --out omniglot_maml_5w1s_39min

With --budget-minutes training stops at the first curve point past that much training time
(evaluation excluded) and the final evaluation uses the parameters reached there.

The data folder is --data-dir or $METAJAX_DATA (default ../shared/data).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, TEST_SEED, machine, save, train_with_curve  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.harness.args import TrainArgs  # noqa: E402
from metajax.harness.problem import build  # noqa: E402
from metajax.harness.run import evaluate  # noqa: E402
from metajax.learners import REGISTRY  # noqa: E402



def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", default="maml", choices=sorted(REGISTRY))
  parser.add_argument("--ways", type=int, default=5)
  parser.add_argument("--shots", type=int, default=1)
  parser.add_argument("--queries", type=int, default=15)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--meta-batch", type=int, default=32)
  parser.add_argument("--inner-steps", type=int, default=1)
  parser.add_argument("--inner-lr", type=float, default=0.4)
  parser.add_argument("--outer-lr", type=float, default=1e-3)
  parser.add_argument("--eval-inner-steps", type=int, default=3)
  parser.add_argument("--curve-every", type=int, default=50)
  parser.add_argument("--curve-tasks", type=int, default=100)
  parser.add_argument("--test-tasks", type=int, default=600)
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--budget-minutes", type=float, help="stop after this much training time")
  parser.add_argument("--out", help="results file name (default omniglot_<algo>_<ways>w<shots>s)")
  ns = parser.parse_args()
  args = TrainArgs(dataset="omniglot", data_dir=ns.data_dir, algo=ns.algo, steps=ns.steps,
                   meta_batch=ns.meta_batch, ways=ns.ways, shots=ns.shots, queries=ns.queries,
                   inner_steps=ns.inner_steps, inner_lr=ns.inner_lr, outer_lr=ns.outer_lr,
                   eval_inner_steps=ns.eval_inner_steps if REGISTRY[ns.algo].eval_inner_steps else None,
                   eval_queries=ns.queries,
                   chunk=ns.curve_every, seed=ns.seed)
  problem = build(args)
  state, steps, train_time_s, curve = train_with_curve(args, problem, curve_tasks=ns.curve_tasks,
                                                       budget_minutes=ns.budget_minutes, label=ns.algo)
  final = evaluate(problem, state, ns.test_tasks, seed=TEST_SEED + ns.seed)
  mean, ci = mean_and_ci95(final["accuracy"])
  name = ns.out or f"omniglot_{ns.algo}_{ns.ways}w{ns.shots}s"
  print(f"{name}: {100 * mean:.2f} ± {100 * ci:.2f} % over {ns.test_tasks} test tasks after "
        f"{steps} meta-steps ({train_time_s:.0f} s of training)")
  save(name, {"machine": machine(), "args": vars(ns), "meta_steps": steps,
              "train_time_s": train_time_s, "accuracy": mean, "ci95": ci, "curve": curve})


if __name__ == "__main__":
  main()
