"""``metajax`` console script.

  metajax train            meta-train (no options: MAML on sinusoid regression, the
                           MAML paper's protocol) and print an evaluation line
  metajax eval RUN_DIR     evaluate a run's latest checkpoint on new tasks
  metajax plot RUN_DIR     write learning curves (and the sinusoid figure) as PNG
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from metajax.core.xla_cpu import use_fast_cpu_convolutions
from metajax.harness.args import ALGO_DEFAULTS, CHOICES, DATASET_DEFAULTS, TrainArgs, check_splits_exist
from metajax.harness.checkpoint import CheckpointError
from metajax.harness.run import (Interrupted, NonFiniteLoss, eval_file_name, load_run, read_run_file, report,
                                 run)
from metajax.learners.registry import REGISTRY

HELP = {
    "dataset": "task family: sinusoid (generated), or an image set read from --data-dir: omniglot, "
               "mini-imagenet, cifar-fs, fc100, tiered-imagenet or cub",
    "data_dir": "folder with the dataset files (default: $METAJAX_DATA)",
    "algo": "meta-learning algorithm (protonet, matching, matching-fce and relation need an image dataset)",
    "steps": "outer (meta) steps",
    "meta_batch": "tasks per meta-step",
    "ways": "classes per task (N), classification datasets",
    "train_ways": "classes per training task (protonet, matching, matching-fce and relation only)",
    "shots": "support examples per task, per class for classification",
    "train_shots": "support examples per training task (per class)",
    "queries": "query examples per task (per class) during training",
    "inner_steps": "inner gradient steps during meta-training",
    "inner_lr": "inner learning rate, initial value when learned",
    "inner_optimizer": "inner-loop optimizer: sgd, or adam (Reptile's: beta1 0, at --inner-lr); gradient-based "
                       "learners",
    "carry_inner_state": "reptile: the inner Adam's state carries over from task to task (the paper's code); "
                         "otherwise it starts anew for every task",
    "carry_mode": "with --carry-inner-state, how a step's tasks share that state: mean (each starts from the "
                  "step's state; their final states' mean carries on) or sequential (one after another, as the "
                  "paper's code)",
    "inner_batch": "support examples per inner step in meta-training, class-interleaved mini-batches cycling "
                   "through the support set (Reptile's inner loop; default: the whole support)",
    "eval_inner_batch": "the same at evaluation (default: the whole support)",
    "outer_optimizer": "outer optimizer: adam, or sgd (Reptile's meta step: --outer-lr 1 moves to the tasks' "
                       "mean adapted weights)",
    "outer_lr": "learning rate (step size) of the outer optimizer",
    "outer_lr_decay_steps": "anneal the outer learning rate to 0 over this many meta-steps, or halve it after "
                            "every this many (0: constant)",
    "outer_lr_decay": "how --outer-lr-decay-steps anneals: cosine (MAML++) or linear (Reptile) to 0, or halve "
                      "(ProtoNet, Relation)",
    "clip_grad_norm": "clip the outer gradient to this global norm (default: no clipping)",
    "clip_scope": "what --clip-grad-norm clips to that norm: all (the whole outer gradient), or network (each "
                  "of the learner's networks apart, as the Relation network's code clips its encoder and relation "
                  "module)",
    "width": "channels of the Conv4 blocks (image datasets; hidden size of the sinusoid rnn)",
    "downsample": "how Conv4 halves the resolution: max_pool, or stride (stride-2 convolutions: the MAML and "
                  "Reptile Omniglot network, about a quarter of the work)",
    "conv_features": "how Conv4's last feature maps become vectors (the head's input, or the metric learners' "
                     "embedding; image datasets): flatten, or mean (averaged over space: MAML's Omniglot code; "
                     "the same on max-pooled 28x28 inputs); relation compares the maps and refuses mean",
    "conv_init": "how Conv4's blocks start (image datasets): lecun (LeCun-normal kernels, flax's default), torch "
                 "(PyTorch's defaults: kernels uniform on +-1/sqrt(fan-in), BatchNorm scales 1), or torch_legacy "
                 "(PyTorch's before 1.0, which ProtoNet's code ran on: BatchNorm scales from U(0, 1)), or sung (the "
                 "Relation network's code: kernels normal, variance 2/(9 x out channels); its relation module's "
                 "linear layers N(0, 0.01), biases 1)",
    "unpadded_blocks": "how many of Conv4's first blocks convolve without padding (image datasets; max_pool "
                       "only): 2 is the Relation network's embedding, 28x28 -> 5x5 maps (default: 0, all padded)",
    "eval_tasks": "new tasks in the final evaluation",
    "eval_queries": "query examples per evaluation task (per class). Batch-statistics BatchNorm normalises "
                    "them together, so accuracy depends on it: MAML's code tests with --shots, as it trains, "
                    "Reptile's transductive test with 1",
    "eval_inner_steps": "inner steps at evaluation (default: same as --inner-steps)",
    "train_split": "split meta-trained on (Omniglot, Vinyals: train, val, trainval, test; Lake: background, "
                   "evaluation, background_small1, background_small2; the other image sets: train, val, test)",
    "eval_split": "split evaluated (and validated) on",
    "resample": "how Omniglot's 105x105 drawings shrink: lanczos (grey levels), or nearest (black and white, "
                "as the MAML, ProtoNet, Reptile and Relation network codes had them: Pillow resizes 1-bit "
                "images with nearest neighbours whatever filter is asked for)",
    "invert": "invert Omniglot's images: strokes 1 on a 0 background (MAML's and ProtoNet's codes, 1.0 - image; "
              "default: 0 on 1, as the PNGs)",
    "seed": "PRNG seed (initialisation, task sampling)",
    "chunk": "meta-steps fused into one compiled call",
    "task_strategy": "how the task axis runs: auto, vmap, map or unroll",
    "devices": "shard each task batch over this many devices, or 'all' (data parallel; "
               "--meta-batch must divide evenly)",
    "out_dir": "run directory: run.json, metrics.jsonl, checkpoints/, summary.json",
    "resume": "continue the run in --out-dir from its latest checkpoint (same settings)",
    "val_every": "validate on --val-tasks held-out tasks every N chunks (0: never)",
    "val_tasks": "tasks per validation",
    "checkpoint_every": "checkpoint every N chunks (and at the end) when --out-dir is set",
    "keep_checkpoints": "checkpoints kept (older ones are deleted)",
}
TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="metajax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="meta-train a learner",
                         description="Meta-train a learner. The defaults take minutes (about 10 for an image "
                                     "dataset on 2 CPU cores), not the papers' budgets: "
                                     "benchmarks/omniglot_table.py has those.")
  for field in dataclasses.fields(TrainArgs):
    flag = "--" + field.name.replace("_", "-")
    kind = TYPES.get(str(field.type).removeprefix("Optional[").rstrip("]"), str)
    shown = _defaults_shown(field)
    if kind is bool:
      train.add_argument(flag, action="store_true", help=HELP[field.name])
      continue
    kwargs = {"default": field.default, "help": HELP[field.name] + shown, "type": kind}
    choices = {"algo": sorted(REGISTRY), **{k: list(v) for k, v in CHOICES.items()}}
    if field.name in choices:
      kwargs["choices"] = choices[field.name]
    train.add_argument(flag, **kwargs)
  evaluate = sub.add_parser("eval", help="evaluate a run directory's latest checkpoint (or a kept earlier one)")
  evaluate.add_argument("run_dir", help="a directory written by metajax train --out-dir")
  evaluate.add_argument("--step", type=int, help="the checkpoint's meta-step (default: the latest; "
                        "--keep-checkpoints of them are kept)")
  evaluate.add_argument("--eval-split", help=HELP["eval_split"] + " (default: the run's; its --train-split "
                        "tests the model on the classes it was trained on)")
  evaluate.add_argument("--eval-tasks", type=int, help=HELP["eval_tasks"])
  evaluate.add_argument("--eval-inner-steps", type=int, help=HELP["eval_inner_steps"])
  evaluate.add_argument("--shots", type=int, help="support examples per test task (per class; default: the run's "
                        "--shots). The model is the one trained at the run's --train-shots")
  evaluate.add_argument("--eval-queries", type=int, help=HELP["eval_queries"] + " (default: the run's)")
  evaluate.add_argument("--eval-inner-batch", type=int, help=HELP["eval_inner_batch"] + " (default: the run's)")
  evaluate.add_argument("--data-dir", help=HELP["data_dir"] + " (default: the run's)")
  plot = sub.add_parser("plot", help="write PNG learning curves of a run directory")
  plot.add_argument("run_dir", help="a directory written by metajax train --out-dir")
  plot.add_argument("--width", type=int, default=900, help="image width in pixels (default: 900)")
  plot.add_argument("--height", type=int, default=400, help="image height in pixels (default: 400)")
  return parser


def _defaults_shown(field: dataclasses.Field) -> str:
  """`` (default: ...)`` for ``--help``: the field's default, per dataset and per algorithm."""
  if field.name in DATASET_DEFAULTS["sinusoid"]:
    by_value: dict = {}  # datasets sharing a default are listed together
    for name, values in DATASET_DEFAULTS.items():
      by_value.setdefault(values[field.name], []).append(name)
    notes = [f"{value} {', '.join(names)}" for value, names in by_value.items()]
  elif field.name in ("train_ways", "train_shots"):
    notes = ["--" + field.name.removeprefix("train_")]
  elif field.default is None or "default" in HELP[field.name]:
    return ""
  else:
    notes = [str(field.default)]
  by_algo: dict = {}  # datasets sharing an algorithm's default are listed together
  for (algo, data), values in ALGO_DEFAULTS.items():
    if field.name in values:
      by_algo.setdefault((values[field.name], algo), []).append(data)
  notes += [f"{value} {algo} on {', '.join(names)}" for (value, algo), names in by_algo.items()]
  return " (default: " + "; ".join(notes) + ")"


def _run_dir(path: str) -> Path:
  run_dir = Path(path)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"run directory {path!r} does not exist")
  return run_dir


def _main(ns: argparse.Namespace) -> None:
  if ns.command == "train":
    if not ns.resume:  # a saved run's options were accepted when it started
      check_splits_exist(ns.dataset, train_split=ns.train_split, eval_split=ns.eval_split)
    run(TrainArgs(**{k: v for k, v in vars(ns).items() if k != "command"}))
  elif ns.command == "eval":
    saved = read_run_file(_run_dir(ns.run_dir))
    check_splits_exist(saved["dataset"], eval_split=ns.eval_split)
    args, problem, state = load_run(ns.run_dir, step=ns.step, eval_tasks=ns.eval_tasks,
                                    eval_inner_steps=ns.eval_inner_steps, eval_queries=ns.eval_queries,
                                    data_dir=ns.data_dir, eval_split=ns.eval_split,
                                    shots=ns.shots, eval_inner_batch=ns.eval_inner_batch, out_dir=ns.run_dir)
    other_split = ns.eval_split not in (None, saved["eval_split"])
    report(args, problem, state, split_named=other_split,
           out_name=eval_file_name(args, int(state.step), problem.entry.inner_steps, split_named=other_split))
  else:
    from metajax.harness import plots
    run_dir = _run_dir(ns.run_dir)
    print("wrote", plots.learning_curves(run_dir, ns.width, ns.height))
    if read_run_file(run_dir).get("dataset") == "sinusoid":
      print("wrote", plots.sinusoid_adaptation(run_dir, ns.width, ns.height))


def _attach_negative_numbers(argv: Sequence[str]) -> list[str]:
  """``--opt -1e-3`` -> ``--opt=-1e-3``: argparse takes a negative number in exponent notation for an
  option and reports ``expected one argument``; attached, the value reaches its own check."""
  out: list[str] = []
  for token in argv:
    if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-") and _is_number(token):
      out[-1] = f"{out[-1]}={token}"
    else:
      out.append(token)
  return out


def _is_number(token: str) -> bool:
  try:
    float(token)
  except ValueError:
    return False
  return True


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point; returns the exit code (2 for user errors, 130 when interrupted)."""
  use_fast_cpu_convolutions(warn=False)  # before the first JAX computation of the process
  try:
    ns = _parser().parse_args(_attach_negative_numbers(sys.argv[1:] if argv is None else argv))
  except SystemExit as done:  # argparse has printed its usage line, or --help
    return int(done.code or 0)
  try:
    _main(ns)
  except Interrupted as stop:
    print(f"metajax {ns.command}: interrupted; checkpoint saved at meta-step {stop.step} "
          "(continue with --resume)", file=sys.stderr)
    return 130
  except (ValueError, NonFiniteLoss, CheckpointError, OSError) as err:
    log = _log_error(ns, argv)
    print(f"metajax {ns.command}: error: {err}" + (f" (details in {log})" if log else ""), file=sys.stderr)
    return 2
  return 0


def _log_error(ns: argparse.Namespace, argv: Optional[Sequence[str]]) -> Optional[Path]:
  """Appends the command and the traceback of the error being handled to ``errors.log`` in the
  run directory, when the command names one that exists; returns its path."""
  run_dir = getattr(ns, "run_dir", None) or getattr(ns, "out_dir", None)
  if not run_dir or not Path(run_dir).is_dir():
    return None
  path = Path(run_dir) / "errors.log"
  command = " ".join(["metajax", *(sys.argv[1:] if argv is None else map(str, argv))])
  try:
    with open(path, "a") as f:
      f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {command}\n{traceback.format_exc()}")
  except OSError:
    return None
  return path


if __name__ == "__main__":
  sys.exit(main())
