"""A trained Omniglot run tested two ways: on the Vinyals test split's classes, rotations included
(this project's table), and on its 423 test characters unrotated (the test set of Nichol et al.'s
Reptile code, which rotates only the training characters).

  python benchmarks/omniglot_unrotated.py /root/metajax-runs/vinyals_reptile_5w1s --shots 1 5

Same model, same 600 task seeds as ``omniglot_table.py``, ``--queries`` per class (default
``omniglot_table.CURVE_QUERIES``, its learning curves'; its tests take each paper's,
``omniglot_table.test_queries``); prints and saves ``results/omniglot_unrotated_<run>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, TEST_SEED, machine, save  # noqa: E402
from omniglot_table import CURVE_QUERIES  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.data import episodes, omniglot  # noqa: E402
from metajax.harness.run import evaluate, load_run, read_run_file  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", help="a run directory trained on the Vinyals split")
  parser.add_argument("--shots", type=int, nargs="+", default=[1])
  parser.add_argument("--tasks", type=int, default=600)
  parser.add_argument("--queries", type=int, default=CURVE_QUERIES, help="queries per class of every test task")
  parser.add_argument("--seed", type=int, default=0, help="as omniglot_table.py's --seed (task seeds 10,000 + it)")
  parser.add_argument("--data-dir", default=os.environ.get("METAJAX_DATA", str(DEFAULT_DATA)))
  ns = parser.parse_args()
  saved = read_run_file(Path(ns.run_dir))
  dataset, train_split, eval_split = (saved.get(k) for k in ("dataset", "train_split", "eval_split"))
  if (dataset, train_split, eval_split) != ("omniglot", "trainval", "test"):
    raise SystemExit(f"{ns.run_dir} is a {dataset} run on {train_split}/{eval_split}; this compares tests "
                     "of an Omniglot run on the Vinyals trainval/test split")
  test = omniglot.load("test", ns.data_dir, resample=saved["resample"], invert=saved["invert"])  # as it trained
  upright = np.char.endswith(test.names.astype(str), "/rot000")
  characters = jnp.asarray(test.images[upright])
  rows = []
  for shots in ns.shots:
    args, problem, state = load_run(ns.run_dir, shots=shots, eval_queries=ns.queries, eval_tasks=ns.tasks,
                                    data_dir=ns.data_dir)  # the problem's test tasks depend on the shots
    unrotated = lambda key, n, ways=args.ways, shots=shots: episodes.sample(
        key, characters, num_tasks=n, ways=ways, shots=shots, queries=ns.queries)
    for name, tasks in (("rotations as classes", problem.eval_tasks), ("unrotated", unrotated)):
      accuracy = evaluate(problem._replace(eval_tasks=tasks), state, ns.tasks, seed=TEST_SEED + ns.seed,
                          chunk=20)["accuracy"]
      mean, ci = mean_and_ci95(accuracy)
      rows.append({"ways": args.ways, "shots": shots, "test_classes": name, "accuracy": round(100 * mean, 2),
                   "ci95": round(100 * ci, 2), "meta_steps": int(state.step)})
      print(f"{args.algo} {args.ways}w{shots}s at step {int(state.step):,}, {name} "
            f"({int(upright.sum()) if name == 'unrotated' else len(upright)} classes): "
            f"{rows[-1]['accuracy']:.2f} ± {rows[-1]['ci95']:.2f} %", flush=True)
  path = save(f"omniglot_unrotated_{Path(ns.run_dir).name}",
              {"run_dir": str(ns.run_dir), "tasks": ns.tasks, "queries": ns.queries, "rows": rows,
               "machine": machine()})
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
