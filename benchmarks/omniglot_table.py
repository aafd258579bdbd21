"""The Omniglot few-shot table: each learner at 5w1s / 5w5s / 20w1s / 20w5s beside its paper.

  python benchmarks/omniglot_table.py run --algo protonet --ways 5 --shots 1 --budget-minutes 30
  python benchmarks/omniglot_table.py run --algo maml --ways 20 --shots 1 --split lake
  python benchmarks/omniglot_table.py test --algo reptile --ways 5 --shots 5 --model-shots 1
  python benchmarks/omniglot_table.py test --algo fomaml --ways 5 --shots 1   # its own model again
  python benchmarks/omniglot_table.py render      # table -> stdout, omniglot_table.png (and the ablations')
  python benchmarks/omniglot_table.py merge gpu_table.json --git COMMIT   # rows run elsewhere
  python benchmarks/omniglot_table.py park --algo maml --ways 20 --shots 1    # an unfinished run, for git to keep
  python benchmarks/omniglot_table.py unpark --algo maml --ways 20 --shots 1  # on a new machine, to go on with it
  python benchmarks/omniglot_table.py run --algo maml --ways 5 --shots 1 --steps 2 \
      --runs-dir /tmp/smoke-runs --table /tmp/smoke.json   # a smoke run, away from the table and its runs

``run`` trains one cell with its paper's protocol (:func:`protocol`; differences are
stored with the cell) in a run directory ``--runs-dir/<split>_<algo>_<W>w<S>s`` that
holds Orbax checkpoints: run the same command again (in another session, under
``nohup``) and it resumes where it stopped, exactly. A new machine's runs directory is
empty: ``park`` packs a stopped cell's run directory (its newest intact checkpoint) into
``benchmarks/parked/<cell>.tar.gz``, which git keeps, and ``unpark`` unpacks it into the runs
directory, for ``run`` or ``test`` to go on from. Training stops at ``--steps``
or at the first curve point past ``--budget-minutes`` of training time in all
(evaluation excluded), past ``--wall-minutes``, or at the end of the chunk running at a
Ctrl-C (``kill -INT``); then ``--test-tasks`` (600) test tasks give the cell's accuracy and 95% CI,
written into ``--table`` (``benchmarks/results/omniglot_table.json``; a smoke run gives another
file), replacing that cell. The test tasks have as many queries per class as the paper's code tests
with (:func:`test_queries`; the learning curves' tasks 15). ``test`` tests a cell's model again, or
gives a cell the model of another that trains identically (Reptile's 1- and 5-shot cells of a way).
``run --set NAME=VALUE`` (repeatable) changes a protocol setting for an ablation: its run directory
is named by the changes, and its row goes to ``<table>_ablations.json`` beside the table, never the table.

Splits: ``vinyals`` (meta-train on trainval, test on the test characters, 28×28
with rotations as classes) and ``lake`` (Lake et al. 2015: meta-train on
images_background with rotations, test on images_evaluation without rotations,
each task's classes drawn from one alphabet).

The data folder is --data-dir or $METAJAX_DATA (default ../shared/data).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import sys
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, RESULTS, TEST_SEED, machine, train_with_curve  # noqa: E402

from metajax.core import mean_and_ci95  # noqa: E402
from metajax.core.validate import check_finite_number, check_positive_int  # noqa: E402
from metajax.data import episodes, omniglot  # noqa: E402
from metajax.data.images import Resample  # noqa: E402
from metajax.harness.args import RESUMABLE_CHANGES, TrainArgs  # noqa: E402
from metajax.harness import checkpoint  # noqa: E402
from metajax.harness.problem import Problem, build  # noqa: E402
from metajax.harness.run import (RUN_FILE, TEST_CHANGES, evaluate, fingerprint, load_run, read_run_file,  # noqa: E402
                                 saved_args)

TABLE = RESULTS / "omniglot_table.json"  # --table's default
PARKED = Path(__file__).parent / "parked"  # --parked-dir's default: run directories for git to keep
RECORDS = (RUN_FILE, "metrics.jsonl", "curve.jsonl")  # what a run directory needs to resume, but its checkpoint
CELLS = ((5, 1), (5, 5), (20, 1), (20, 5))
# Each paper's Omniglot accuracy (%), Vinyals split, at CELLS. Reptile: its transductive
# numbers (Nichol et al. 2018, table 1), since BatchNorm here uses the test batch's statistics.
PAPER = {
    "maml": (98.7, 99.9, 95.8, 98.9), "fomaml": (98.3, 99.2, 89.4, 97.9),
    "reptile": (97.68, 99.48, 89.43, 97.12), "protonet": (98.8, 99.7, 96.0, 98.9),
    "matching": (98.1, 98.9, 93.8, 98.5), "matching-fce": (98.1, 98.9, 93.8, 98.5),
    "relation": (99.6, 99.8, 97.6, 99.1),
}
SPLITS = {"vinyals": ("trainval", "test"), "lake": ("background", "evaluation")}
CURVE_QUERIES = 15  # queries per class of every learning curve's tasks (and of tests but :func:`test_queries`)
# Issue 14's targets: these learners at their paper's number within the CI; the others within
# 1 point at 5-way and 3 at 20-way.
WITHIN_CI = ("protonet", "relation")
# Every paper's code here shrinks Omniglot's 1-bit PNGs with Pillow, which resizes 1-bit images with nearest
# neighbours whatever filter is asked for (MAML's resize_images.py asks for Lanczos; the Relation network
# reads MAML's resized images). ProtoNet's and the Relation network's protocols make their images as their
# code (--resample nearest; ProtoNet's --invert too), as both start afresh; the others keep Lanczos, with
# which their rows and the runs still going were trained.
RESAMPLE_DIFFERENCE = ("images shrunk with Lanczos, grey levels (their code: black and white, nearest neighbours, "
                       "as Pillow resizes 1-bit PNGs whatever filter is asked for)")
INVERT_DIFFERENCE = ("strokes dark on light, 0 on 1 (their code inverts the images, 1 on 0; inverted, the FOMAML "
                     "20w1s curve was the same within noise: benchmarks/probes/omniglot_fomaml_network.py invert)")
# The image differences an ablation's ``--set`` can undo: the setting, and its value in the paper's code.
UNDONE_BY = {RESAMPLE_DIFFERENCE: ("resample", "nearest"), INVERT_DIFFERENCE: ("invert", True)}
# Finn et al.'s inner loss is the support set's per-example cross-entropy over update_batch_size, summed by
# tf.gradients: ``ways`` times the mean cross-entropy of every learner here.
INNER_STEP_DIFFERENCE = (
    "their inner learning rate on the mean cross-entropy, so 1/ways of their inner step (their loss sums the "
    "support's per-example losses divided by the shots: on the mean, their rate is update_lr x ways, 2.0 at 5- and "
    "20-way; with 2.0, the FOMAML 20w1s curve was lower over its first 1,000 steps: "
    "results/omniglot_fomaml_20w1s_network_variants.json)")


def meets_target(row: dict) -> bool | None:
  """Whether a table row is as close to its paper as the issue asks (None: no paper number)."""
  if row["paper"] is None:
    return None
  if row["algo"] in WITHIN_CI:
    return round(row["accuracy"] + row["ci95"], 2) >= row["paper"]
  return row["accuracy"] >= row["paper"] - (1.0 if row["ways"] == 5 else 3.0)


def protocol(algo: str, ways: int, shots: int) -> tuple[dict, list[str]]:
  """``TrainArgs`` settings of ``algo``'s paper for a cell, and how this run differs from it."""
  if algo in ("maml", "fomaml"):  # Finn et al. 2017, section 5.2 and their code
    five = ways == 5
    update_lr = 0.4 if five else 0.1
    # Their step on the mean loss is update_lr x ways (INNER_STEP_DIFFERENCE). 20-way MAML takes it: at
    # update_lr its curve dipped and stalled at 85-87 (RESULTS.md); FOMAML 20w1s diverged with it, and
    # the 5-way rows met their targets at update_lr.
    inner_lr = update_lr * ways if algo == "maml" and not five else update_lr
    return (dict(meta_batch=32 if five else 16, inner_steps=1 if five else 5, inner_lr=inner_lr,
                 eval_inner_steps=3 if five else 5, queries=shots, steps=60_000, downsample="stride",
                 conv_features="mean"),
            ["BatchNorm has a scale, and the inner loop adapts it and the shift (theirs: a shift only, "
             "meta-learned but not adapted; with theirs, the MAML 20w1s curve was the same within noise over its "
             "first 1,000 steps: benchmarks/probes/omniglot_fomaml_network.py bn --algo maml)",
             "the head starts LeCun-normal, std 1/8 (theirs: standard normal)",
             "conv kernels start LeCun-normal (theirs: Glorot-uniform, the first layer's std 5.7x smaller; "
             "with theirs, the FOMAML 20w1s curve was the same within noise: "
             "benchmarks/probes/omniglot_fomaml_network.py xavier)",
             "the Vinyals characters (theirs: 1,100 drawn at random to train on, the last 423 to test on)",
             RESAMPLE_DIFFERENCE, INVERT_DIFFERENCE]
            + ([INNER_STEP_DIFFERENCE] if inner_lr == update_lr else []))
  if algo == "reptile":  # Nichol et al. 2018, appendix A, and the run_omniglot.py commands of their README
    # since 361145c ("match latest version of the paper"; the March 2018 README had other ones), tested transductively
    five = ways == 5
    steps = 100_000 if five else 200_000
    return (dict(meta_batch=5, inner_steps=5 if five else 10, inner_optimizer="adam",
                 inner_lr=1e-3 if five else 5e-4, carry_inner_state=True, inner_batch=10 if five else 20,
                 eval_inner_steps=50,
                 eval_inner_batch=5 if five else 10, train_shots=10, queries=5, steps=steps,
                 outer_optimizer="sgd", outer_lr=1.0, outer_lr_decay="linear", outer_lr_decay_steps=steps,
                 downsample="stride"),
            ["the inner Adam's carried state is the mean over the task batch (theirs runs the tasks in turn: "
             "--carry-mode sequential, whose 5w1s curve matched the mean carry's within noise to 5,500 steps)",
             "inner mini-batches cycle through the support with classes interleaved (theirs: reshuffled)",
             "the Vinyals characters, tested with rotations as classes (theirs: 1,200 drawn at random to train "
             "on, the other 423 tested unrotated; benchmarks/omniglot_unrotated.py)", RESAMPLE_DIFFERENCE])
  if algo == "protonet":  # Snell et al. 2017, section 3.1
    # Their code inverts the images and ran on PyTorch before 1.0: kernels uniform on +-1/sqrt(fan-in),
    # BatchNorm scales from U(0, 1) (torch_legacy). With both, the 20w5s cell scored 98.66 +- 0.08 against
    # 98.49 +- 0.08 at 8,000 episodes (RESULTS.md).
    return (dict(meta_batch=1, train_ways=60, queries=5, steps=40_000, outer_lr_decay="halve",
                 outer_lr_decay_steps=2_000, resample="nearest", invert=True, conv_init="torch_legacy"),
            ["a fixed 40,000 episodes on the training and validation characters (their code stops training on "
             "the training characters when the validation loss has not fallen for 20,000 episodes, then trains "
             "again on both for the best episode count plus 20,000)",
             "BatchNorm normalises each test task with its own statistics, support and query together (their "
             "code tests with the running averages of training; with population statistics the 20w5s model scored "
             "the same: benchmarks/probes/protonet_population_bn.py)"])
  if algo in ("matching", "matching-fce"):  # Vinyals et al. 2016
    return (dict(meta_batch=8, queries=15, steps=40_000),
            (["no full-context embeddings (the matching-fce row has them)"] if algo == "matching" else []) +
            ["attention normalises only the support embeddings (the paper: cosine of both)",
             "8 episodes per meta-step"])
  if algo == "relation":  # Sung et al. 2018, section 4.1
    queries = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}[(ways, shots)]
    # Their code clips the encoder's and the relation module's gradients to norm 0.5 each, and starts
    # both as its weights_init (conv_init="sung").
    return (dict(meta_batch=1, queries=queries, steps=1_000_000, outer_lr_decay="halve",
                 outer_lr_decay_steps=100_000, unpadded_blocks=2, conv_init="sung", clip_grad_norm=0.5,
                 clip_scope="network", resample="nearest"),
            ["the Vinyals characters, rotations as classes (their code: 1,200 characters drawn at random to train "
             "on, the other 423 to test on, each task turned by one random multiple of 90 degrees)",
             "one 600-task test of the last model (their code tests 1,000 tasks every 5,000 episodes and keeps "
             "the model whenever that test accuracy rises: the paper's number is a best of test evaluations)"])
  raise ValueError(f"no Omniglot protocol for {algo!r}; choose one of {sorted(PAPER)}")


def test_queries(algo: str, shots: int) -> int:
  """Queries per class of a cell's 600-task test, as its paper's code tests. BatchNorm normalises
  with the test batch's statistics, so the batch's size is part of the protocol: MAML's code tests
  one batch of ``shots`` per class (its ``update_batch_size``, as it trains), the Relation network's
  too (its test scripts, BatchNorm in training mode), Reptile's transductive test one per class.
  The other learners, and every learning curve, use 15."""
  if algo in ("maml", "fomaml", "relation"):
    return shots
  return 1 if algo == "reptile" else CURVE_QUERIES


def lake_eval_tasks(data_dir: str, ways: int, shots: int, *, resample: Resample, invert: bool):
  """``(key, n, queries=CURVE_QUERIES) -> Task`` batch from images_evaluation without rotations,
  each task's classes from one alphabet (Lake et al.'s within-alphabet one-shot setting), its
  images made as the run's (``resample``, ``invert``)."""
  test = omniglot.load("evaluation", data_dir, rotations=False, resample=resample, invert=invert)
  images, groups = jnp.asarray(test.images), jnp.asarray(omniglot.alphabet_ids(test))
  return lambda key, n, queries=CURVE_QUERIES: episodes.sample(key, images, num_tasks=n, ways=ways, shots=shots,
                                                               queries=queries, groups=groups)


def _on_split(problem: Problem, ns: argparse.Namespace, args: TrainArgs) -> Problem:
  """``problem`` with ``ns.split``'s test tasks (``build``'s are the Vinyals test split's), their
  images made as those of the run of ``args``."""
  if ns.split == "lake":
    return problem._replace(eval_tasks=lake_eval_tasks(ns.data_dir, ns.ways, ns.shots, resample=args.resample,
                                                       invert=args.invert))
  return problem


def _with_queries(problem: Problem, queries: int) -> Problem:
  """``problem`` whose test tasks have ``queries`` per class."""
  return problem._replace(eval_tasks=functools.partial(problem.eval_tasks, queries=queries))


def _cell(ns: argparse.Namespace, shots: int) -> str:
  """The cell's run directory name: its split, learner, ways and shots, and an ablation's settings by name."""
  changes = "".join(f"_{k}-{v}" for k, v in sorted(_overrides(ns).items()))
  return f"{ns.split}_{ns.algo}_{ns.ways}w{shots}s{changes}"


# Settings that leave the trained model as it is: resumable ones, test-time ones, and the chunk
# (it only groups the meta-steps between checkpoints).
SAME_MODEL = RESUMABLE_CHANGES + TEST_CHANGES + ("chunk",)
# TrainArgs fields a cell's command line fixes (--algo, --ways, ...): ``--set`` may not change them.
CELL_FIELDS = ("dataset", "data_dir", "algo", "ways", "shots", "eval_queries", "eval_tasks", "train_split",
               "eval_split", "seed", "out_dir", "resume")


def _setting(pair: str) -> tuple[str, Any]:
  """``--set``'s ``NAME=VALUE`` as a ``TrainArgs`` setting (VALUE read as JSON, else a string; its type and
  range are ``TrainArgs``'s to check, in :func:`_cell_args`)."""
  name, sep, value = pair.partition("=")
  if not sep or name not in {f.name for f in dataclasses.fields(TrainArgs)} or name in CELL_FIELDS + SAME_MODEL:
    raise argparse.ArgumentTypeError(f"{pair!r}: expected NAME=VALUE with NAME a training setting of TrainArgs "
                                     f"(not one of the cell's own options or {', '.join(SAME_MODEL)})")
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    return name, value


def _option(parse: Callable[[str], Any], check: Callable[[Any, str], None], what: str) -> Callable[[str], Any]:
  """An argparse type: the text ``parse``d, passing ``check`` (``metajax.core.validate``'s), else a usage
  error ("'TEXT' is not ``what``")."""
  def convert(text: str) -> Any:
    try:
      value = parse(text)
      check(value, what)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    return value
  return convert


_count = _option(int, check_positive_int, "a positive integer")  # tasks, meta-steps
_minutes = _option(float, check_finite_number, "a number of minutes (0 or more)")  # a time budget


def _table_file(text: str) -> Path:
  """``--table``: a ``.json`` file, not one of ablation rows (``*_ablations.json``)."""
  if not text.endswith(".json") or text.endswith("_ablations.json"):
    raise argparse.ArgumentTypeError(f"{text!r} is not a table file (a .json not named *_ablations.json)")
  return Path(text)


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
  """The ablation's settings, ``--set`` in order (none for ``test``)."""
  return dict(getattr(ns, "set", None) or [])


def _cell_args(ns: argparse.Namespace, settings: dict, **run: Any) -> TrainArgs:
  """The ``TrainArgs`` of ``ns``'s cell under its protocol ``settings``; ``run``: run-directory options."""
  train_split, eval_split = SPLITS[ns.split]
  try:
    return TrainArgs(dataset="omniglot", data_dir=ns.data_dir, algo=ns.algo, ways=ns.ways, shots=ns.shots,
                     eval_queries=CURVE_QUERIES, eval_tasks=ns.test_tasks, train_split=train_split,
                     eval_split=eval_split, seed=ns.seed, **settings, **run)
  except ValueError as err:  # a --set value TrainArgs refuses
    raise SystemExit(f"{_cell(ns, ns.shots)}: {err}") from err


def ablated(settings: dict, differences: list[str], overrides: dict[str, Any]) -> tuple[dict, list[str]]:
  """A protocol's ``settings`` and ``differences`` under an ablation's ``overrides``: the differences they
  undo (``UNDONE_BY``) dropped, one naming each override and the protocol's value added."""
  defaults = {f.name: f.default for f in dataclasses.fields(TrainArgs)}
  changed = [f"ablation: {k}={v!r} (the protocol's: {settings.get(k, defaults[k])!r})" for k, v in overrides.items()]
  settings = {**settings, **overrides}
  kept = [d for d in differences if d not in UNDONE_BY or settings.get(UNDONE_BY[d][0]) != UNDONE_BY[d][1]]
  return settings, kept + changed


def run_cell(ns: argparse.Namespace) -> dict:
  overrides = _overrides(ns)
  settings, differences = ablated(*protocol(ns.algo, ns.ways, ns.shots), overrides)
  if ns.steps is not None:
    settings["steps"] = ns.steps
  cell = _cell(ns, ns.shots)
  out_dir = Path(ns.runs_dir) / cell
  resume = _check_resumable(out_dir, ns.budget_minutes)
  curve_every = ns.curve_every or (read_run_file(out_dir)["chunk"] if resume else 500)
  curve_file = out_dir / "curve.jsonl"
  curve = _read_jsonl(curve_file)
  curve_tasks = _curve_tasks(curve, ns.curve_tasks)
  args = _cell_args(ns, settings, chunk=curve_every, out_dir=str(out_dir), resume=resume)
  problem = _on_split(build(args), ns, args)
  state, steps, train_time_s, curve = train_with_curve(
      args, problem, curve_tasks=curve_tasks, budget_minutes=ns.budget_minutes, wall_minutes=ns.wall_minutes,
      eval_chunk=ns.eval_chunk, curve=curve, label=cell,
      on_point=lambda points: curve_file.write_text("".join(json.dumps(p) + "\n" for p in points)))
  return _test_and_store(ns, args, problem, state, steps, train_time_s, curve, settings, differences,
                         **({"ablation": overrides} if overrides else {}))


def _newest_checkpoint(run_dir: Path) -> int | None:
  """The meta-step of ``run_dir``'s newest checkpoint (None: it has none, or does not exist)."""
  return max(checkpoint.manager(run_dir / "checkpoints", create=False).all_steps(), default=None)


def _check_resumable(out_dir: Path, budget_minutes: float | None) -> bool:
  """Whether ``out_dir`` holds a run to resume (a checkpoint); refuses a run directory without one (it
  stopped before its first curve point: nothing to lose, but ``rm`` is the user's call), a new run of a
  cell that :data:`PARKED` holds (hours of training, likely forgotten), and a run already past
  ``budget_minutes`` at its newest checkpoint (``run`` would train one more chunk)."""
  newest = _newest_checkpoint(out_dir)
  if newest is None:
    if (out_dir / RUN_FILE).exists():
      raise SystemExit(f"{out_dir} holds a run with no checkpoint (it stopped before its first curve point); "
                       f"remove it (rm -r {out_dir}) to start the cell again")
    parked = _archive(out_dir, PARKED)
    if parked.exists():
      raise SystemExit(f"{parked} holds this cell's run: unpark it first (omniglot_table.py "
                       f"unpark with this cell's options and --runs-dir {out_dir.parent}) to go on from it, or "
                       "remove the archive to start the cell again")
    return False
  seconds = _trained_seconds(out_dir, newest)
  if budget_minutes is not None and seconds is not None and seconds >= 60 * budget_minutes:
    raise SystemExit(f"{out_dir.name} had trained {seconds / 60:.1f} minutes at its newest checkpoint "
                     f"(meta-step {newest:,}), past --budget-minutes {budget_minutes:g}: raise the budget to "
                     "train on, or test it again with the test command")
  return True


def _curve_tasks(curve: list[dict], asked: int | None) -> int:
  """The test tasks of each curve point: a resumed curve's own (its points record them), else ``asked`` or
  100; refuses to go on with another number, which would mix two curves in one."""
  recorded = curve[-1].get("tasks") if curve else None
  if asked is not None and recorded is not None and asked != recorded:
    raise SystemExit(f"--curve-tasks {asked}: the run's curve points are on {recorded} tasks each; leave "
                     "--curve-tasks out to go on with them")
  return asked or recorded or 100


def _trained_seconds(run_dir: Path, step: int) -> float | None:
  """The training time ``metrics.jsonl`` records at meta-step ``step`` (None if it has no record)."""
  timed = [p["time_s"] for p in _read_jsonl(run_dir / "metrics.jsonl") if p["step"] == step]
  return timed[-1] if timed else None


def _archive(run_dir: Path, parked_dir: str | Path) -> Path:
  """The :func:`park` archive of the cell whose run directory is ``run_dir``."""
  return Path(parked_dir) / f"{run_dir.name}.tar.gz"


def park(ns: argparse.Namespace) -> Path:
  """Packs a stopped cell's run directory, its records and newest intact checkpoint only, into
  ``<parked-dir>/<cell>.tar.gz`` for git to keep: a session may start on a new machine, whose runs
  directory is empty. Refuses to replace an archive of a later meta-step."""
  run_dir = Path(ns.runs_dir) / _cell(ns, ns.shots)
  if not (run_dir / RUN_FILE).is_file():
    raise SystemExit(f"no run to park: {run_dir} holds no {RUN_FILE}")
  mngr = checkpoint.manager(run_dir / "checkpoints", create=False)
  run_fingerprint = fingerprint(saved_args(run_dir))
  step = next((s for s in sorted(mngr.all_steps(), reverse=True) if _intact(mngr, s, run_fingerprint)), None)
  if step is None:
    raise SystemExit(f"{run_dir} holds no intact checkpoint to park")
  archive = _archive(run_dir, ns.parked_dir)
  if archive.exists():
    with _open_archive(archive) as tar:
      if _parked_step(archive, tar) > step:
        raise SystemExit(f"{archive} is at a later meta-step than {run_dir} ({step:,}); remove it to park this run")
  archive.parent.mkdir(parents=True, exist_ok=True)
  partial = archive.with_name(archive.name + ".partial")
  with tarfile.open(partial, "w:gz") as tar:
    for name in [*RECORDS, f"checkpoints/{step}"]:
      if (run_dir / name).exists():
        tar.add(run_dir / name, arcname=f"{run_dir.name}/{name}")
  os.replace(partial, archive)  # an interrupted park leaves the previous archive intact
  print(f"parked {run_dir.name} at meta-step {step:,}: {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
  return archive


def _intact(mngr, step: int, run_fingerprint: str) -> bool:
  """Whether checkpoint ``step`` verifies against its integrity record and its run's fingerprint."""
  try:
    checkpoint.verify(mngr, step, run_fingerprint)
  except checkpoint.CheckpointError:
    return False
  return True


@contextlib.contextmanager
def _open_archive(archive: Path):
  """``archive`` open for reading; a damaged or foreign one, here or while it is read, stops with its name."""
  try:
    with tarfile.open(archive, "r:gz") as tar:
      yield tar
  except (tarfile.TarError, EOFError, zlib.error) as err:  # damaged data inside: the checkpoint's digests
    raise SystemExit(f"{archive} is not a readable park archive ({type(err).__name__}: {err}); "
                     "check it out again, or remove it") from None


def _parked_step(archive: Path, tar: tarfile.TarFile) -> int:
  """The meta-step of the checkpoint in ``archive``, a :func:`park` archive of a run directory named as
  it is; refuses any member that is not a plain file or folder under that name (it unpacks nowhere else)."""
  cell = archive.name.removesuffix(".tar.gz")
  steps = set()
  for member in tar.getmembers():
    parts = PurePosixPath(member.name).parts
    if not parts or parts[0] != cell or ".." in parts or not (member.isfile() or member.isdir()):
      raise SystemExit(f"{archive}: {member.name!r} is not a file of a {cell} run directory; not unpacking it")
    if len(parts) >= 3 and parts[1] == "checkpoints" and parts[2].isdigit():
      steps.add(int(parts[2]))
  if len(steps) != 1:
    raise SystemExit(f"{archive} holds {len(steps)} checkpoints, not one: it is not a park archive")
  return steps.pop()


def unpark(ns: argparse.Namespace) -> Path:
  """Unpacks the cell's :func:`park` archive into the runs directory, where the cell is missing (or an
  empty folder); a run directory as far as the archive or further is left as it is, one behind it is
  refused (which to go on from is the user's call). The unpacking is atomic: a folder beside the cell's,
  renamed into place."""
  run_dir = Path(ns.runs_dir) / _cell(ns, ns.shots)
  archive = _archive(run_dir, ns.parked_dir)
  if not archive.is_file():
    raise SystemExit(f"no park archive of {run_dir.name}: {archive} does not exist")
  here = _newest_checkpoint(run_dir)
  with _open_archive(archive) as tar:
    parked = _parked_step(archive, tar)
    if run_dir.exists() and any(run_dir.iterdir()):
      if here is not None and here >= parked:
        print(f"{run_dir} is at meta-step {here:,}, as far as its archive ({parked:,}) or further: left as it is")
        return run_dir
      raise SystemExit(f"{run_dir} ({'no checkpoint' if here is None else f'meta-step {here:,}'}) is behind its "
                       f"archive {archive} ({parked:,}): to go on from the archive, remove the run directory "
                       f"(rm -r {run_dir}); to go on from the run directory, leave the archive packed")
    aside = run_dir.with_name(f".{run_dir.name}.unpacking")
    shutil.rmtree(aside, ignore_errors=True)  # an interrupted unpark's
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # members checked above either way
    tar.extractall(aside, **safe)
  if run_dir.exists():
    run_dir.rmdir()
  os.rename(aside / run_dir.name, run_dir)
  aside.rmdir()
  print(f"{run_dir}: unpacked from {archive} at meta-step {parked:,}")
  return run_dir


def test_cell(ns: argparse.Namespace) -> dict:
  """Tests a trained cell's model again (``--model-shots`` omitted: the cell's own, as after a change
  of its protocol's test), or the model of the ``--model-shots`` cell on ``--shots``-shot tasks. Either
  only when the source run's saved settings are the ones this cell's protocol trains with (Reptile
  trains every cell of a way on 10 shots), so this cell would train the identical model."""
  own = ns.model_shots in (None, ns.shots)
  source = Path(ns.runs_dir) / _cell(ns, ns.shots if own else ns.model_shots)
  train_again = (f"train it first: omniglot_table.py run --algo {ns.algo} --ways {ns.ways} "
                 f"--shots {ns.shots if own else ns.model_shots} --split {ns.split} --runs-dir {ns.runs_dir}")
  if not (source / RUN_FILE).is_file():
    raise SystemExit(f"no trained {source.name} cell in {source.parent}; {train_again}"
                     + (" (or unpark it: it is parked)" if _archive(source, PARKED).exists() else ""))
  settings, differences = protocol(ns.algo, ns.ways, ns.shots)
  saved = read_run_file(source)
  if ns.seed is None:  # the run's own: its test tasks are keyed by it, as run keyed its row's
    ns = argparse.Namespace(**{**vars(ns), "seed": saved.get("seed", 0)})
  wanted = dataclasses.asdict(_cell_args(ns, settings))
  differ = {k: v for k, v in wanted.items() if k not in SAME_MODEL and saved.get(k) != v}
  if differ:
    named = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} (this cell: {v!r})" for k, v in differ.items())
    hint = "leave --seed out to test with the run's own" if differ.keys() == {"seed"} else "run the cell instead"
    raise SystemExit(f"{source.name} was not trained as {_cell(ns, ns.shots)} would be: {named}; {hint}")
  try:
    args, problem, state = load_cell(ns, source, settings)
  except checkpoint.CheckpointError as err:
    raise SystemExit(f"{source}: {err}; {train_again}") from err
  steps = int(state.step)
  seconds = _trained_seconds(source, steps)
  if seconds is None:
    raise SystemExit(f"{source}/metrics.jsonl has no training time for step {steps}, its newest checkpoint")
  print(f"testing {source.name}'s model at meta-step {steps:,} of its planned {args.steps:,} on "
        f"{ns.shots}-shot tasks")
  if own:
    curve = [p for p in _read_jsonl(source / "curve.jsonl") if p["step"] <= steps]
    return _test_and_store(ns, args, problem, state, steps, seconds, curve, settings, differences,
                           **_training_machine(ns, steps, _recorded_protocol(args, settings)))
  differences = differences + [f"the model of the {ns.ways}w{ns.model_shots}s cell (the same training), "
                               f"tested at {ns.shots} shots; no learning curve of its own"]
  return _test_and_store(ns, args, problem, state, steps, seconds, [], settings, differences,
                         trained_by=source.name, **_source_machine(ns, steps, _recorded_protocol(args, settings)))


def load_cell(ns: argparse.Namespace, source: Path, settings: dict) -> tuple[TrainArgs, Problem, Any]:
  """Settings, test problem and newest checkpointed state of the run directory ``source``, tested as
  ``ns``'s cell: ``ns.shots``-shot tasks of its split's test classes (:func:`_on_split`), curve queries
  (:func:`_with_queries` gives a test's), and the protocol ``settings``' test inner loop, which the
  run's saved settings leave out."""
  args, problem, state = load_run(source, shots=ns.shots, eval_queries=CURVE_QUERIES, eval_split=SPLITS[ns.split][1],
                                  eval_tasks=ns.test_tasks, data_dir=ns.data_dir,
                                  eval_inner_steps=settings.get("eval_inner_steps"),
                                  eval_inner_batch=settings.get("eval_inner_batch"))
  return args, _on_split(problem, ns, args), state


def _training_machine(ns: argparse.Namespace, steps: int, recorded: dict) -> dict:
  """``{"trained_on": machine}``, the training command and commit of the table's row for ``ns``'s cell,
  which a new test of the cell's own model at meta-step ``steps``, trained as ``recorded``
  (:func:`_recorded_protocol`), keeps; ``{}`` when the table has no row of that cell. Refuses to replace
  a row holding another model (another cell's, other steps, or other training settings)."""
  row = _table_row(ns.table, ns.split, ns.algo, ns.ways, ns.shots)
  if row is None:
    return {}
  if not _holds_own_model(row, steps, recorded):
    held = (f"{row['trained_by']}'s model" if "trained_by" in row
            else f"a model at meta-step {row['meta_steps']:,}" if row["meta_steps"] != steps
            else f"a model trained with other settings ({_settings_change(row.get('protocol', {}), recorded)})")
    raise SystemExit(f"the table's {_cell(ns, ns.shots)} row holds {held}, not this run's at {steps:,}; "
                     "pass --model-shots to test another cell's model, or run the cell")
  return {"trained_on": trained_on(row)}


def _source_machine(ns: argparse.Namespace, steps: int, recorded: dict) -> dict:
  """``{"trained_on": machine}`` of the ``--model-shots`` cell's row when it holds that cell's own model
  at meta-step ``steps``, trained as ``recorded``: the model another cell borrows; ``{}`` when the table
  does not know it."""
  row = _table_row(ns.table, ns.split, ns.algo, ns.ways, ns.model_shots)
  if row is None or not _holds_own_model(row, steps, recorded):
    return {}
  return {"trained_on": trained_on(row)}


def _holds_own_model(row: dict, steps: int, recorded: dict) -> bool:
  """Whether a table row holds its cell's own model (not another cell's) at meta-step ``steps``, trained
  as ``recorded``: a row recorded before a setting joined the protocol holds a model trained without it."""
  return "trained_by" not in row and row["meta_steps"] == steps and row.get("protocol") == recorded


def _settings_change(old: dict, new: dict) -> str:
  """``old``'s settings that ``new`` lacks or sets otherwise, as ``key: old -> new``."""
  return ", ".join(f"{k}: {old.get(k, 'unset')!r} -> {new.get(k, 'unset')!r}"
                   for k in sorted(old.keys() | new.keys()) if old.get(k, "unset") != new.get(k, "unset"))


def _rows(table: Path) -> list[dict]:
  return json.loads(table.read_text()) if table.exists() else []


def _table_row(table: Path, split: str, algo: str, ways: int, shots: int) -> dict | None:
  """The row of a cell in the table file ``table``, if any."""
  return next((r for r in _rows(table) if _cell_of(r) == (split, algo, ways, shots)), None)


def trained_on(row: dict) -> dict:
  """The machine that trained ``row``'s model: a model tested again keeps its training's."""
  return row.get("trained_on", row["machine"])


def _recorded_protocol(args, settings: dict) -> dict:
  """What a row records of how its model trained: ``args``' values of the protocol's ``settings`` and of
  the ways, shots and test steps it trained with."""
  return {k: v for k, v in vars(args).items() if k in settings or k in ("train_ways", "train_shots", "eval_inner_steps")}


def _test_and_store(ns, args, problem, state, steps, train_time_s, curve, settings, differences, **extra) -> dict:
  """Tests ``state`` on ``ns.test_tasks`` tasks of :func:`test_queries` and writes the cell's row into
  the table ``ns.table`` (an ablation's beside it: :func:`_destination`)."""
  queries = test_queries(ns.algo, ns.shots)
  final = evaluate(_with_queries(problem, queries), state, ns.test_tasks, seed=TEST_SEED + ns.seed,
                   chunk=ns.eval_chunk)
  mean, ci = mean_and_ci95(final["accuracy"])
  paper = PAPER[ns.algo][CELLS.index((ns.ways, ns.shots))] if ns.split == "vinyals" else None
  cell = _cell(ns, ns.shots)
  row = {"algo": ns.algo, "ways": ns.ways, "shots": ns.shots, "accuracy": round(100 * mean, 2),
         "ci95": round(100 * ci, 2), "meta_steps": steps, "train_seconds": round(train_time_s, 1),
         "paper": paper, "split": ns.split, "planned_steps": args.steps, "test_tasks": ns.test_tasks,
         "test_queries": queries,
         "protocol": _recorded_protocol(args, settings),
         "differences": differences, "curve": curve, **extra, "machine": machine()}
  print(f"{cell}: {row['accuracy']:.2f} ± {row['ci95']:.2f} % over {ns.test_tasks} test tasks after "
        f"{row['meta_steps']} meta-steps ({row['train_seconds']:.0f} s of training); paper {paper}")
  _store(row, _destination(ns.table, row))
  return row


def _read_jsonl(path: Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell_of(row: dict) -> tuple:
  """A row's cell: its split, learner, ways and shots."""
  return row["split"], row["algo"], row["ways"], row["shots"]


def _cell_key(row: dict) -> tuple:
  """A row's cell, and its ablation's settings (``"null"`` for the table's rows)."""
  return *_cell_of(row), json.dumps(row.get("ablation"), sort_keys=True)


def _ablations_file(table: Path) -> Path:
  """The file of the ablation rows of the table file ``table`` (``<name>.json``): ``<name>_ablations.json``
  beside it."""
  return table.with_name(f"{table.stem}_ablations.json")


def _destination(table: Path, row: dict) -> Path:
  """The file a row goes to: the table file ``table``, or an ablation's :func:`_ablations_file`."""
  return _ablations_file(table) if "ablation" in row else table


def _store(row: dict, table: Path) -> None:
  """Writes ``row`` into ``table``, replacing the row of the same cell (and ablation); cells may
  run in parallel: the read-modify-write holds a lock."""
  table.parent.mkdir(parents=True, exist_ok=True)
  with open(table.with_suffix(".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    rows = _rows(table)
    order = lambda r: (r["split"] != "vinyals", list(PAPER).index(r["algo"]), CELLS.index((r["ways"], r["shots"])),
                       _cell_key(r)[-1])
    rows = sorted([r for r in rows if _cell_key(r) != _cell_key(row)] + [row], key=order)
    table.write_text(json.dumps(rows, indent=1))


def merge(ns: argparse.Namespace) -> None:
  """Stores the rows of ``ns.file`` (another copy's table, e.g. a lent GPU's) that the table
  ``ns.table`` lacks or holds otherwise; a row whose machine has no commit (a copy without ``.git``)
  gets ``ns.git``. Refuses the whole file, before storing any row, if a row would replace one trained
  further (unless ``ns.force``), or if it holds ablation rows, rows naming no commit without ``ns.git``,
  two rows of one cell, or a new row off the protocol's test (no cell of the table, fewer than 600 test
  tasks, other test queries than :func:`test_queries`; the copy's unchanged older rows may be)."""
  held = {_cell_key(r): r for r in _rows(ns.table)}
  new, seen = [], set()
  for row in json.loads(Path(ns.file).read_text()):
    name = f"{row['split']} {row['algo']} {row['ways']}w{row['shots']}s"
    if "ablation" in row:
      raise SystemExit(f"{ns.file} holds ablation rows; it must be a copy of the table")
    if _cell_key(row) in seen:
      raise SystemExit(f"{ns.file} holds two {name} rows; nothing merged")
    seen.add(_cell_key(row))
    for record in ("machine", "trained_on"):
      if record in row and not row[record].get("git"):
        if not ns.git:
          raise SystemExit(f"{ns.file}: its {name} row names no commit; pass --git with the commit its "
                           "working tree was")
        row[record]["git"] = f"{ns.git} (its working tree)"
    old = held.get(_cell_key(row))
    if row == old:
      continue
    if row["split"] not in SPLITS or row["algo"] not in PAPER or (row["ways"], row["shots"]) not in CELLS:
      raise SystemExit(f"{ns.file}: its {name} row is no cell of the table; nothing merged")
    if row["test_tasks"] < 600 or row["test_queries"] != test_queries(row["algo"], row["shots"]):
      raise SystemExit(f"{ns.file}: its {name} row was tested on {row['test_tasks']} tasks of {row['test_queries']} "
                       f"queries, not 600+ of {test_queries(row['algo'], row['shots'])}; nothing merged")
    if old is not None and old["meta_steps"] > row["meta_steps"] and not ns.force:
      raise SystemExit(f"{ns.file}: its {name} row ({row['meta_steps']:,} meta-steps) would replace one "
                       f"trained to {old['meta_steps']:,}; nothing merged (--force to replace it)")
    new.append((name, row, old))
  for name, row, old in new:
    _store(row, ns.table)
    replaced = "" if old is None else (f", replacing {old['accuracy']:.2f} ± {old['ci95']:.2f} after "
                                       f"{old['meta_steps']:,} on {trained_on(old)['device']}")
    print(f"merged {name}: {row['accuracy']:.2f} ± {row['ci95']:.2f} after {row['meta_steps']:,} meta-steps on "
          f"{trained_on(row)['device']}{replaced}")
  if not new:
    print(f"{ns.file}: no row that {ns.table.name} lacks")


def render(ns: argparse.Namespace) -> None:
  """Prints the table ``ns.table`` as Markdown (for RESULTS.md) and plots accuracy against training time
  into the ``.png`` beside it; the same for its ablation rows, if any (:func:`render_ablations`)."""
  rows = _rows(ns.table)
  print("| split | algo | cell | accuracy (600 tasks, 95% CI) | queries | paper | to paper, target "
        "| meta-steps (planned) | training | device |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    paper = "—" if r["paper"] is None else f"{r['paper']:.1f}"
    met = meets_target(r)
    target = "—" if met is None else f"{r['accuracy'] - r['paper']:+.2f}" + (", met" if met else "")
    shared = f" ({r['trained_by'].rsplit('_', 1)[1]}'s model)" if "trained_by" in r else ""
    print(f"| {r['split']} | {r['algo']} | {r['ways']}w{r['shots']}s | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
          f"{r['test_queries']} | {paper} | {target} | {r['meta_steps']:,} ({r['planned_steps']:,}) | "
          f"{r['train_seconds'] / 60:.1f} min{shared} | {trained_on(r)['device']} |")
  figure = ns.table.with_suffix(".png")
  plot(rows, figure)
  print(f"wrote {figure}")
  ablations_file = _ablations_file(ns.table)
  if ablations_file.exists():
    render_ablations(rows, _rows(ablations_file), ablations_file.with_suffix(".png"))


def _settings(row: dict) -> str:
  """An ablation row's settings, ``name=value, ...``."""
  return ", ".join(f"{k}={v}" for k, v in row["ablation"].items())


def render_ablations(rows: list[dict], ablations: list[dict], figure: Path) -> None:
  """Prints the ablation rows as Markdown, each beside its cell's table row, and plots their curves
  against the table row's into ``figure`` (none: no curve to plot)."""
  table = {_cell_of(r): r for r in rows}
  print("\n| split | algo | cell | ablation | accuracy (600 tasks, 95% CI) | meta-steps | the table's row | device |")
  print("|---|---|---|---|---|---|---|---|")
  for r in ablations:
    own = table.get(_cell_of(r))
    beside = "—" if own is None else f"{own['accuracy']:.2f} ± {own['ci95']:.2f} after {own['meta_steps']:,}"
    print(f"| {r['split']} | {r['algo']} | {r['ways']}w{r['shots']}s | {_settings(r)} | "
          f"{r['accuracy']:.2f} ± {r['ci95']:.2f} | {r['meta_steps']:,} | {beside} | {trained_on(r)['device']} |")
  if any(r["curve"] for r in ablations):
    plot_ablations(rows, ablations, figure)
    print(f"wrote {figure}")


def plot_ablations(rows: list[dict], ablations: list[dict], path: Path):
  """One panel per ablated cell with a curve: each ablation's learning curve (dashed) and its cell's table row's
  (solid, "protocol") against meta-steps, which, unlike training minutes, ablations run on other days
  and machines share; a dotted line marks the paper's number. Returns the figure."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  table = {_cell_of(r): r for r in rows}
  cells = sorted({_cell_of(r) for r in ablations if r["curve"]})
  fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.8), squeeze=False)
  for ax, cell in zip(axes[0], cells):
    own = table.get(cell)
    lines = [] if own is None or not own["curve"] else [(own, "-", "protocol")]
    lines += [(r, "--", _settings(r)) for r in ablations if _cell_of(r) == cell and r["curve"]]
    for i, (r, style, label) in enumerate(lines):
      ax.plot([p["step"] for p in r["curve"]], [100 * p["accuracy"] for p in r["curve"]], style, color=f"C{i}",
              label=label)
    if lines[0][0]["paper"] is not None:
      ax.axhline(lines[0][0]["paper"], color="k", linestyle=":", label="paper")
    split, algo, ways, shots = cell
    ax.set(title=f"{algo} {ways}w{shots}s ({split})", xlabel="meta-steps", ylabel="test-task accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return fig


def plot(rows: list[dict], path: Path):
  """Each row's learning curve (``--curve-tasks`` test tasks, 15 queries per class) against its training minutes,
  one panel per cell, log scale: the curve ends where the budget stopped it, and a bar in its colour
  there marks its paper's number. One colour per learner in every panel; dashed: trained on an
  accelerator; dotted: Lake's split. Rows without a curve of their own (another cell's model) draw
  nothing. Returns the figure."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D
  curves = [r for r in rows if r["curve"]]
  colour = {algo: f"C{i}" for i, algo in enumerate(sorted({r["algo"] for r in curves}))}
  bar = dict(marker="_", markersize=12, markeredgewidth=2)  # a paper's number
  bottom = min([50] + [10 * (100 * p["accuracy"] // 10) for r in curves for p in r["curve"]])
  fig, axes = plt.subplots(1, len(CELLS), figsize=(4 * len(CELLS), 3.8), sharey=True)
  for ax, cell in zip(axes, CELLS):
    for r in (r for r in curves if (r["ways"], r["shots"]) == cell):
      minutes = [p["train_time_s"] / 60 for p in r["curve"]]
      style = ":" if r["split"] == "lake" else "-" if trained_on(r)["device"] == "cpu" else "--"
      ax.plot(minutes, [100 * p["accuracy"] for p in r["curve"]], style, color=colour[r["algo"]],
              label=f"{r['algo']} ({r['split']})")
      if r["paper"] is not None:
        ax.plot(minutes[-1], r["paper"], color=colour[r["algo"]], **bar)
    ax.set(title=f"{cell[0]}-way {cell[1]}-shot", xlabel="training minutes", xscale="log", ylim=(bottom, 100))
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("test-task accuracy (%)")
  handles = [Line2D([], [], color=c, label=algo) for algo, c in colour.items()] + [
      Line2D([], [], color="k", linestyle="--", label="accelerator"), Line2D([], [], color="k", linestyle=":", label="Lake split"),
      Line2D([], [], color="k", linestyle="", label="paper", **bar)]
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  return fig


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  cell = sub.add_parser("run", help="train and test one cell (resumes its run directory)")
  retest = sub.add_parser("test", help="test a cell's trained model again, or another cell's that trains "
                                       "identically at these shots")
  parked = sub.add_parser("park", help="pack a stopped cell's run directory (its newest checkpoint) into "
                                       "--parked-dir, for git to keep")
  unparked = sub.add_parser("unpark", help="unpack a cell's park archive into --runs-dir, to go on from it")
  for command in (cell, retest, parked, unparked):
    command.add_argument("--algo", required=True, choices=sorted(PAPER))
    command.add_argument("--ways", type=int, required=True, choices=(5, 20))
    command.add_argument("--shots", type=int, required=True, choices=(1, 5))
    command.add_argument("--split", default="vinyals", choices=sorted(SPLITS))
    command.add_argument("--runs-dir", default=str(Path(__file__).parent / "runs"))
  for command in (parked, unparked):
    command.add_argument("--parked-dir", default=str(PARKED),
                         help="the folder of park archives, <cell>.tar.gz (default: benchmarks/parked)")
    command.add_argument("--set", action="append", type=_setting, metavar="NAME=VALUE",
                         help="an ablation cell's settings, as run was given them")
  for command in (cell, retest):
    command.add_argument("--test-tasks", type=_count, default=600)
    command.add_argument("--eval-chunk", type=_count, default=20, help="test tasks evaluated at once (memory only: the tasks are the same whatever it is)")
    command.add_argument("--data-dir", default=os.environ.get("METAJAX_DATA", str(DEFAULT_DATA)))
  cell.add_argument("--set", action="append", type=_setting, metavar="NAME=VALUE",
                    help="an ablation: change a protocol setting (repeatable; the row goes to the table's "
                         "<name>_ablations.json beside it)")
  cell.add_argument("--steps", type=_count, help="meta-steps (default: the paper's)")
  cell.add_argument("--budget-minutes", type=_minutes, help="stop after this much training time in all")
  cell.add_argument("--wall-minutes", type=_minutes,
                    help="stop at the first curve point past this much wall time of this invocation's training, "
                         "compilation and curve points included, loading the data and the final test not (a "
                         "machine lent for a while)")
  cell.add_argument("--curve-every", type=_count,
                    help="meta-steps between curve points, the run's chunk (default: 500, or the run's when "
                         "resuming)")
  cell.add_argument("--curve-tasks", type=_count,
                    help="test tasks of each curve point (default: 100, or the run's when resuming)")
  cell.add_argument("--seed", type=int, default=0, help="the run's seed: its training and test tasks")
  cell.set_defaults(fn=run_cell)
  retest.add_argument("--model-shots", type=int, choices=(1, 5),
                      help="the shots of the cell whose run directory holds the model (default: this cell's)")
  retest.add_argument("--seed", type=int, help="the trained run's seed, which keys its test tasks (default: the run's "
                                              "own, from its run.json)")
  retest.set_defaults(fn=test_cell)
  parked.set_defaults(fn=park)
  unparked.set_defaults(fn=unpark)
  rendered = sub.add_parser("render", help="print the Markdown table and its ablations', plot the curves")
  rendered.set_defaults(fn=render)
  merged = sub.add_parser("merge", help="store the new rows of another copy's table file (a lent GPU's)")
  for command in (cell, retest, rendered, merged):
    command.add_argument("--table", type=_table_file, default=TABLE,
                         help="the table file, <name>.json (default: benchmarks/results/omniglot_table.json; give a "
                              "smoke run another); ablation rows go into <name>_ablations.json beside it")
  merged.add_argument("file")
  merged.add_argument("--git", help="the commit of that copy's working tree, for rows that name none")
  merged.add_argument("--force", action="store_true", help="replace rows trained further, too")
  merged.set_defaults(fn=merge)
  ns = parser.parse_args()
  ns.fn(ns)


if __name__ == "__main__":
  main()
