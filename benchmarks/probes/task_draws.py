"""Probe: how much of the gap between a table row tested before commit 5ba4a44 and one tested after
it is the test tasks? Before it, ``harness.run.evaluate`` drew each chunk of ``--eval-chunk`` tasks
from ``fold_in(key, start)``; since, task ``i`` comes from ``fold_in(key, i)``. The seeds did not
change (10,000 plus the run's --seed for the 600 test tasks, 123 for the curve's), the tasks did:
two such rows, and their learning curves, were not scored on the same tasks.

  python benchmarks/probes/task_draws.py --algo protonet --ways 20 --shots 1 --split lake --old-chunk 10 \
      --runs-dir /root/metajax-runs [--out lake_task_draws]

Scores a table cell's own newest checkpoint as ``omniglot_table.py test`` does (its protocol's test
queries and inner loop; the curve's tasks with 15 queries a class) on both draws of both task sets,
the old one in chunks of ``--old-chunk`` (the old run's ``--eval-chunk``: 20 unless its command
says otherwise), and prints (with ``--out`` also saves) the four accuracies with their 95% CIs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import omniglot_table as T  # noqa: E402  (applies the fast CPU convolutions via _common)
from _common import CURVE_SEED, DEFAULT_DATA, TEST_SEED, machine, save  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.harness.run import evaluate  # noqa: E402


def evaluate_chunk_keyed(problem, state, num_tasks: int, seed: int, chunk: int) -> np.ndarray:
  """Per-task accuracy on the tasks ``evaluate`` drew before commit 5ba4a44: chunk ``start`` of
  ``chunk`` tasks from ``fold_in(PRNGKey(seed), start)``."""
  key = jax.random.PRNGKey(seed)
  parts = [problem.evaluate(state, problem.eval_tasks(jax.random.fold_in(key, start), min(chunk, num_tasks - start)))
           for start in range(0, num_tasks, chunk)]
  return np.concatenate([np.asarray(p["accuracy"]) for p in parts])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", required=True, choices=sorted(T.PAPER))
  parser.add_argument("--ways", type=int, required=True, choices=(5, 20))
  parser.add_argument("--shots", type=int, required=True, choices=(1, 5))
  parser.add_argument("--split", default="vinyals", choices=("vinyals", "lake"))
  parser.add_argument("--test-tasks", type=int, default=600)
  parser.add_argument("--old-chunk", type=int, default=20, help="the old run's --eval-chunk")
  parser.add_argument("--runs-dir", default=str(Path(T.__file__).parent / "runs"))
  parser.add_argument("--data-dir", default=DEFAULT_DATA)
  parser.add_argument("--out", help="save the result as benchmarks/results/<out>.json")
  ns = parser.parse_args()

  run_dir = Path(ns.runs_dir) / T._cell(ns, ns.shots)
  settings, _ = T.protocol(ns.algo, ns.ways, ns.shots)
  args, problem, state = T.load_cell(ns, run_dir, settings)
  curve_tasks = T._curve_tasks(T._read_jsonl(run_dir / "curve.jsonl"), None)
  test_problem = T._with_queries(problem, T.test_queries(ns.algo, ns.shots))
  sets = {"test": (test_problem, TEST_SEED + args.seed, ns.test_tasks),
          "curve": (problem, CURVE_SEED, curve_tasks)}
  results = {}
  for name, (tester, seed, tasks) in sets.items():
    for draw, acc in (("since 5ba4a44", evaluate(tester, state, tasks, seed=seed, chunk=ns.old_chunk)["accuracy"]),
                      ("before 5ba4a44", evaluate_chunk_keyed(tester, state, tasks, seed, ns.old_chunk))):
      mean, ci = mean_and_ci95(acc)
      results[f"{name}, drawn {draw}"] = {"accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2)}
      print(f"{name} ({tasks} tasks, seed {seed}), drawn {draw}: {100 * mean:.2f} ± {100 * ci:.2f} %")
  payload = {"run": run_dir.name, "meta_steps": int(state.step), "old_chunk": ns.old_chunk, "results": results,
             "machine": machine()}
  if ns.out:
    print("saved", save(ns.out, payload))


if __name__ == "__main__":
  main()
