"""``metajax`` console script. ``metajax train`` with no options meta-trains MAML on
sinusoid regression (the MAML paper's protocol) and prints an evaluation line."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

from metajax.train import ALGORITHMS, DATASET_DEFAULTS, NonFiniteLoss, TrainArgs, run

HELP = {
    "dataset": "task family: sinusoid (generated) or omniglot (needs --data-dir)",
    "data_dir": "folder with the dataset files (default: $METAJAX_DATA)",
    "algo": "meta-learning algorithm",
    "steps": "outer (meta) steps (default per dataset: 70000 sinusoid, 2000 omniglot)",
    "meta_batch": "tasks per meta-step (default: 25 sinusoid, 32 omniglot)",
    "ways": "classes per task (N), classification datasets",
    "shots": "support examples per task, per class for classification (default: 10 / 1)",
    "queries": "query examples per task (per class) during training (default: 10 / 15)",
    "inner_steps": "inner gradient steps during meta-training",
    "inner_lr": "inner learning rate, initial value when learned (default: 0.01 / 0.4)",
    "outer_lr": "Adam learning rate of the outer optimizer",
    "clip_grad_norm": "clip the outer gradient to this global norm (default: no clipping)",
    "width": "channels of the Conv4 blocks (image datasets)",
    "eval_tasks": "new tasks in the final evaluation (default: 1000 / 600)",
    "eval_queries": "query examples per evaluation task (per class) (default: 100 / 15)",
    "eval_inner_steps": "inner steps at evaluation (None: same as --inner-steps)",
    "train_split": "Omniglot split meta-trained on (Vinyals: train, val, trainval, test; Lake: background, ...)",
    "eval_split": "Omniglot split evaluated on",
    "seed": "PRNG seed (initialisation, task sampling)",
    "chunk": "meta-steps fused into one compiled call (default: 1000 / 10)",
    "task_strategy": "how the task axis runs: auto, vmap, map or unroll",
    "out_dir": "write metrics.jsonl and summary.json here",
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="metajax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="meta-train a learner", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  for field in dataclasses.fields(TrainArgs):
    flag = "--" + field.name.replace("_", "-")
    kind = {"int": int, "float": float, "str": str}.get(str(field.type).replace("Optional[", "").rstrip("]"), str)
    default = "" if field.default is None or "default" in HELP[field.name] else f" (default: {field.default})"
    kwargs = {"default": field.default, "help": HELP[field.name] + default, "type": kind}
    if field.name == "algo":
      kwargs["choices"] = sorted(ALGORITHMS)
    if field.name == "dataset":
      kwargs["choices"] = sorted(DATASET_DEFAULTS)
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
