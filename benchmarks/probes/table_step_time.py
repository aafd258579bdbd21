"""Probe: why does a table cell's meta-step take longer than ``maml_speed.py`` measures for
the same configuration? Times the table's own learner (``omniglot_table.protocol``, the
registry's build, real Omniglot episodes) three ways, each after its compilation:

  step   ``jax.jit(learner.meta_step)`` on one sampled batch, called again and again
         (what ``maml_speed.py`` times, there with its own ``maml.MAMLConfig``);
  scan   ``train_steps``, ``--scan-steps`` meta-steps in one ``lax.scan`` that samples on
         device (what ``omniglot_table.py run`` and ``metajax train`` call);
  sample the episode sampler alone, jitted.

  python benchmarks/probes/table_step_time.py --algo maml --ways 20 --shots 1 [--repeats 5 --scan-steps 10]
      [--out table_step_time]

Prints seconds a meta-step for each (and with ``--out`` saves them, with the machine, as
``benchmarks/results/<out>.json``); RESULTS.md has the findings."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import omniglot_table as T  # noqa: E402  (applies the fast CPU convolutions via _common)
from _common import DEFAULT_DATA, call_seconds, machine, save  # noqa: E402

from metajax.core.loop import train_steps  # noqa: E402
from metajax.harness.problem import build  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", default="maml", choices=sorted(T.PAPER))
  parser.add_argument("--ways", type=int, default=20, choices=(5, 20))
  parser.add_argument("--shots", type=int, default=1, choices=(1, 5))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scan-steps", type=int, default=10)
  parser.add_argument("--out", help="save the times as benchmarks/results/<out>.json")
  parser.add_argument("--data-dir", default=os.environ.get("METAJAX_DATA", str(DEFAULT_DATA)))
  cli = parser.parse_args()
  ns = argparse.Namespace(algo=cli.algo, ways=cli.ways, shots=cli.shots, split="vinyals", test_tasks=600,
                          data_dir=cli.data_dir, seed=0)
  settings, _ = T.protocol(cli.algo, cli.ways, cli.shots)
  problem = build(T._cell_args(ns, settings, chunk=cli.scan_steps))
  state, data = problem.state, problem.train_data
  sample = jax.jit(problem.sample_fn)
  batch = sample(jax.random.PRNGKey(0), data)
  step = jax.jit(problem.learner.meta_step)
  scan = lambda: train_steps(state, data, meta_step=problem.learner.meta_step, sample_fn=problem.sample_fn,
                             num_steps=cli.scan_steps)

  def median(fn) -> float:
    times = call_seconds(fn, cli.repeats)
    return times[len(times) // 2]

  times = {"step_s": median(lambda: step(state, batch)),  # a meta-step alone
           "scan_step_s": median(scan) / cli.scan_steps,  # a meta-step inside the scan
           "sample_s": median(lambda: sample(jax.random.PRNGKey(1), data))}  # one batch of episodes
  print(f"{cli.algo} {cli.ways}w{cli.shots}s, seconds (median of {cli.repeats}):")
  for name, value in times.items():
    print(f"  {name:12s} {value:.4f}")
  if cli.out:
    print("saved", save(cli.out, {"cell": f"{cli.algo} {cli.ways}w{cli.shots}s", "repeats": cli.repeats,
                                  "scan_steps": cli.scan_steps, **times, "machine": machine()}))


if __name__ == "__main__":
  main()
