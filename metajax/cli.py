"""``metajax`` console script. ``metajax train`` with no options meta-trains MAML on
sinusoid regression (the MAML paper's protocol) and prints an evaluation line."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

from metajax.train import ALGORITHMS, NonFiniteLoss, TrainArgs, run

HELP = {
    "algo": "meta-learning algorithm",
    "steps": "outer (meta) steps",
    "meta_batch": "tasks per meta-step",
    "shots": "support examples per task (K)",
    "queries": "query examples per task during training",
    "inner_steps": "inner gradient steps during meta-training",
    "inner_lr": "inner learning rate (initial value when learned)",
    "outer_lr": "Adam learning rate of the outer optimizer",
    "eval_tasks": "new tasks in the final evaluation",
    "eval_queries": "query points per evaluation task",
    "eval_inner_steps": "inner steps at evaluation (None: same as --inner-steps)",
    "seed": "PRNG seed (initialisation, task sampling)",
    "chunk": "meta-steps fused into one compiled call (progress-bar granularity)",
    "task_strategy": "how the task axis runs: auto, vmap, map or unroll",
    "out_dir": "write metrics.jsonl and summary.json here",
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="metajax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="meta-train a learner", description=__doc__,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  for field in dataclasses.fields(TrainArgs):
    flag = "--" + field.name.replace("_", "-")
    kind = {"int": int, "float": float, "str": str}.get(str(field.type).replace("Optional[", "").rstrip("]"), str)
    kwargs = {"default": field.default, "help": HELP[field.name], "type": kind}
    if field.name == "algo":
      kwargs["choices"] = sorted(ALGORITHMS)
    if field.name == "task_strategy":
      kwargs["choices"] = ["auto", "vmap", "map", "unroll"]
    train.add_argument(flag, **kwargs)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _parser()
  ns = parser.parse_args(argv)
  options = {k: v for k, v in vars(ns).items() if k != "command"}
  try:
    args = TrainArgs(**options)
    run(args)
  except (ValueError, NonFiniteLoss, OSError) as err:
    print(f"metajax {ns.command}: error: {err}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("metajax: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
