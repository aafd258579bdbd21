"""Probe: does a trained ProtoNet cell test better with BatchNorm's population statistics, as Snell
et al.'s code tests (``model.eval()``: PyTorch's running averages of training), than with each test
task's own batch statistics, as ``metajax.learners.prototypical`` normalises?

metajax's metric learners keep no running statistics, so this estimates them after training: the
trained embedding normalises ``--calibration-episodes`` training episodes (the cell's own 60-way
support + query batches), and each BatchNorm layer's mean and variance are averaged over them. With
the learning rate at a small fraction of its start by the end of training, that is what PyTorch's
running averages (momentum 0.1: about the last 20 batches) hold then.

  python benchmarks/probes/protonet_population_bn.py /root/metajax-runs/vinyals_protonet_20w5s \
      [--test-tasks 600 --calibration-episodes 100 --out protonet_population_bn]

Tests the cell's checkpoint both ways on the same test tasks as ``omniglot_table.py`` (seed 10,000 plus
the run's --seed, 15 queries a class) and prints (with ``--out`` also saves) the two accuracies with
their 95% CIs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import omniglot_table as T  # noqa: E402  (applies the fast CPU convolutions via _common)
from _common import DEFAULT_DATA, TEST_SEED, machine, save  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.harness.run import evaluate, load_run  # noqa: E402
from metajax.learners import metric  # noqa: E402
from metajax.models import Conv4, functional_with_stats  # noqa: E402


def population_stats(apply, params, problem, episodes: int, key) -> dict:
  """Per-layer BatchNorm ``{"mean", "var"}`` averaged over the batch statistics of ``episodes``
  training episodes (support and query as one batch, as ``prototypical`` embeds them)."""
  @jax.jit
  def batch_stats(k):
    task = jax.tree.map(lambda x: x[0], problem.sample_fn(k, problem.train_data))
    return apply(params, jnp.concatenate([task.x_support, task.x_query]))[1]

  stats = [batch_stats(k) for k in jax.random.split(key, episodes)]
  return jax.tree.map(lambda *s: sum(s) / len(s), *stats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", type=Path)
  parser.add_argument("--test-tasks", type=int, default=600)
  parser.add_argument("--calibration-episodes", type=int, default=100)
  parser.add_argument("--data-dir", default=DEFAULT_DATA)
  parser.add_argument("--out", help="save the result as benchmarks/results/<out>.json")
  ns = parser.parse_args()

  args, problem, state = load_run(ns.run_dir, eval_queries=T.CURVE_QUERIES, eval_split="test",
                                  eval_tasks=ns.test_tasks, data_dir=ns.data_dir)
  if args.algo != "protonet":
    raise SystemExit(f"{ns.run_dir} is a {args.algo} run; this probe tests ProtoNet runs")
  model = Conv4(num_classes=None, width=args.width, features=args.conv_features, downsample=args.downsample,
                unpadded_blocks=args.unpadded_blocks)  # the run's network (its start, conv_init, is the checkpoint's)
  x0 = jnp.zeros((1, 28, 28, 1))
  template, _, apply = functional_with_stats(model, model.init(jax.random.PRNGKey(0), x0))
  params = state.meta_params["params"]
  if jax.tree.structure(template) != jax.tree.structure(params):
    raise SystemExit(f"{ns.run_dir}'s parameters are not a Conv4 embedding's")
  stats = population_stats(apply, params, problem, ns.calibration_episodes, jax.random.PRNGKey(1))

  population = metric.prototypical(lambda p, x: apply(p, x, stats)[0], args.ways)
  results = {}
  for name, tester in (("batch", problem), ("population", problem._replace(evaluate=jax.jit(population.evaluate)))):
    acc = evaluate(tester, state, ns.test_tasks, seed=TEST_SEED + args.seed, chunk=10)["accuracy"]
    mean, ci = mean_and_ci95(acc)
    results[name] = {"accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2)}
    print(f"{name:>10} statistics: {100 * mean:.2f} ± {100 * ci:.2f} % over {ns.test_tasks} test tasks")
  payload = {"run": ns.run_dir.name, "meta_steps": int(state.step), "test_tasks": ns.test_tasks,
             "test_queries": T.CURVE_QUERIES, "calibration_episodes": ns.calibration_episodes,
             "results": results, "machine": machine()}
  if ns.out:
    print("saved", save(ns.out, payload))


if __name__ == "__main__":
  main()
