"""The training loop behind ``metajax train``: chunks of fused meta-steps on
device, a progress bar, JSON-lines metrics, Orbax checkpoints with exact resume,
and a final evaluation on new tasks with a 95% confidence interval."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from metajax.core import MetaState, distributed, mean_and_ci95, train_steps
from metajax.harness import checkpoint
from metajax.harness.args import LATER_OPTIONS, RESUMABLE_CHANGES, TrainArgs
from metajax.harness.problem import Problem, build

RUN_FILE = "run.json"
TEST_CHANGES = ("shots", "eval_inner_batch", "eval_split")  # settings a run can be tested at, besides the resumable ones


class Interrupted(KeyboardInterrupt):
  """Training stopped by SIGINT after saving a checkpoint at ``step``."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


class NonFiniteLoss(RuntimeError):
  """Raised when a meta-step produces a NaN or infinite loss; ``step`` is that meta-step."""

  def __init__(self, step: int):
    super().__init__(f"non-finite loss at meta-step {step}; lower the learning rates or set "
                     "--clip-grad-norm")
    self.step = step


class Trained(NamedTuple):
  """What :func:`train` returns."""

  problem: Problem
  state: MetaState
  train_time_s: float


class _DeferredInterrupt:
  """Turns the first SIGINT into a request honoured at the next chunk boundary (so a
  checkpoint is never cut half-written); a second SIGINT interrupts at once."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def read_run_file(run_dir: Path) -> dict:
  """The saved settings of a run directory (with ``LATER_OPTIONS`` an older run lacks), with
  errors naming the folder or file."""
  run_file = run_dir / RUN_FILE
  if not run_file.is_file():
    raise FileNotFoundError(f"{run_dir} holds no {RUN_FILE}; is it a metajax run directory?")
  try:
    saved = json.loads(run_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{run_file} is not valid JSON ({err})") from err
  if not isinstance(saved, dict):
    raise ValueError(f"{run_file} holds {type(saved).__name__}, not the settings of a run")
  return {**LATER_OPTIONS, **saved}


def fingerprint(args: TrainArgs) -> str:
  """A digest of the settings a run's checkpoints depend on (all but ``RESUMABLE_CHANGES``, and
  ``LATER_OPTIONS`` at the value older runs had)."""
  fixed = {k: v for k, v in dataclasses.asdict(args).items()
           if k not in RESUMABLE_CHANGES and not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}
  return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_run_dir(args: TrainArgs) -> Optional[Path]:
  """Creates or checks the run directory; refuses to overwrite a run unless resuming."""
  if not args.out_dir:
    return None
  out = Path(args.out_dir)
  run_file = out / RUN_FILE
  saved = dataclasses.asdict(args)
  if args.resume:
    before = read_run_file(out)
    for name, value in saved.items():
      if name not in RESUMABLE_CHANGES and before.get(name) != value:
        raise ValueError(f"--resume: --{name.replace('_', '-')} was {before.get(name)!r} in the saved "
                         f"run, not {value!r}; resume with the same settings")
    return out
  if run_file.exists() or (out / "checkpoints").exists():
    raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose "
                          "another --out-dir")
  out.mkdir(parents=True, exist_ok=True)
  if not os.access(out, os.W_OK):
    raise PermissionError(f"output directory {out} is not writable")
  run_file.write_text(json.dumps(saved, indent=2))
  return out


def _truncate_metrics(path: Path, step: int) -> float:
  """Drops records after ``step`` (written after the checkpoint a resumed run restarts from)
  and a line torn by a kill; returns the training time the last kept record had reached."""
  if not path.exists():
    return 0.0
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # the process died while writing it
      break
    if record["step"] <= step:
      kept.append(record)
  path.write_text("".join(json.dumps(record) + "\n" for record in kept))
  return float(kept[-1]["time_s"]) if kept else 0.0


def train(args: TrainArgs, problem: Optional[Problem] = None,
          on_chunk: Optional[Callable[[int, MetaState, float], None]] = None) -> Trained:
  """Meta-trains for ``args.steps`` steps in fused chunks, with a progress bar.

  With ``args.out_dir`` it writes ``run.json`` (the settings), ``metrics.jsonl``
  (a record per chunk: each metric's mean over the chunk's meta-steps, and the loss's largest
  value, ``loss_max``, and its last, ``loss_last``, where a spike the mean hides shows, and the
  meta-gradient's largest norm, ``grad_norm_max``)
  and Orbax checkpoints under ``checkpoints/`` every ``checkpoint_every`` chunks
  and at the end; ``args.resume`` restores the latest checkpoint and continues
  with the same chunks, ending bit-identical to an uninterrupted run.
  ``problem`` defaults to ``build(args)``; ``on_chunk(steps_done, state,
  train_seconds)`` runs after every chunk (its time is not counted). Training
  time (``time_s`` in ``metrics.jsonl``, ``Trained.train_time_s``) accumulates
  across resumptions.

  Raises:
    NonFiniteLoss: naming the first meta-step whose loss is NaN or infinite;
      checkpoints written before it are kept.
    Interrupted: on SIGINT, at the end of the running chunk, after checkpointing it.
  """
  out = _prepare_run_dir(args)
  problem = build(args) if problem is None else problem
  state = problem.state
  mngr = None
  earlier = 0.0  # training seconds before this resumption
  if out is not None:
    mngr = checkpoint.manager(out / "checkpoints", max_to_keep=args.keep_checkpoints)
    if args.resume:
      state = checkpoint.restore_newest_intact(mngr, state, fingerprint(args), log=lambda line: tqdm.write(line, file=sys.stderr))
      earlier = _truncate_metrics(out / "metrics.jsonl", int(state.step))
  mesh = None
  if args.devices != "1":
    mesh = distributed.task_mesh("all" if args.devices == "all" else int(args.devices))
    distributed.check_divisible(args.meta_batch, mesh)
    state = distributed.replicate(state, mesh)
  done = int(state.step)
  if done > args.steps:
    raise ValueError(f"the checkpoint is at step {done}, beyond --steps {args.steps}")
  metrics_file = open(out / "metrics.jsonl", "a") if out is not None else None
  start = time.perf_counter() - earlier
  paused = 0.0
  chunks = 0
  stop = _DeferredInterrupt()
  try:
    with tqdm(total=args.steps, initial=done, desc=f"{args.algo} {args.dataset}", unit="step") as bar:
      while done < args.steps:
        n = min(args.chunk, args.steps - done)
        new_state, metrics = train_steps(state, problem.train_data, meta_step=problem.learner.meta_step,
                                         sample_fn=problem.sample_fn, num_steps=n, mesh=mesh)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
        if bad.size:
          raise NonFiniteLoss(done + int(bad[0]) + 1)
        state, done, chunks = new_state, done + n, chunks + 1
        record = {"step": done, **{k: float(v.mean()) for k, v in metrics.items()},
                  "loss_max": float(metrics["loss"].max()), "loss_last": float(metrics["loss"][-1]),
                  **({"grad_norm_max": float(metrics["grad_norm"].max())} if "grad_norm" in metrics else {}),
                  "time_s": round(time.perf_counter() - start - paused, 3)}
        if args.val_every and chunks % args.val_every == 0:
          t0 = time.perf_counter()
          val = evaluate(problem, state, args.val_tasks, seed=args.seed + 20_000)
          record.update({f"val_{k}": float(v.mean()) for k, v in val.items() if not k.endswith("_before")})
          paused += time.perf_counter() - t0
        if metrics_file:
          metrics_file.write(json.dumps(record) + "\n")
          metrics_file.flush()
        if mngr is not None and (chunks % args.checkpoint_every == 0 or done == args.steps):
          checkpoint.save(mngr, state, fingerprint(args))
        bar.set_postfix({k: f"{record[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                         if k in record})
        bar.update(n)
        if on_chunk is not None:
          t0 = time.perf_counter()
          on_chunk(done, state, record["time_s"])
          paused += time.perf_counter() - t0
        if stop.requested:
          if mngr is not None and mngr.latest_step() != done:
            checkpoint.save(mngr, state, fingerprint(args))
          raise Interrupted(done)
  finally:
    stop.restore()
    if metrics_file:
      metrics_file.close()
  return Trained(problem, state, time.perf_counter() - start - paused)


def evaluate(problem: Problem, state: MetaState, num_tasks: int, seed: int,
             inner_steps: Optional[int] = None, chunk: int = 100) -> dict[str, np.ndarray]:
  """Per-task metrics on ``num_tasks`` held-out tasks, evaluated ``chunk`` tasks at a time (memory).

  Task ``i`` is drawn from its own key, ``fold_in(PRNGKey(seed), i)``: the tasks, and so the metrics,
  are the same whatever ``chunk``, and ``n`` tasks are the first ``n`` of any larger count."""
  key = jax.random.PRNGKey(seed)
  draw = jax.vmap(lambda i: jax.tree.map(lambda x: x[0], problem.eval_tasks(jax.random.fold_in(key, i), 1)))
  parts = []
  for start in range(0, num_tasks, chunk):
    batch = draw(np.arange(start, min(start + chunk, num_tasks)))
    parts.append(problem.evaluate(state, batch, inner_steps=inner_steps))
  return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def run(args: TrainArgs, log: Callable[[str], None] = print) -> dict:
  """Meta-trains, evaluates on ``eval_tasks`` new tasks, returns the summary dict."""
  problem, state, train_time = train(args)
  return report(args, problem, state, log, train_time)


def saved_args(run_dir: str | os.PathLike, **changes: Any) -> TrainArgs:
  """The settings ``run_dir``'s checkpoints were trained with (its ``run.json``), with ``changes``."""
  saved = read_run_file(Path(run_dir))
  known = {f.name for f in dataclasses.fields(TrainArgs)}
  return TrainArgs(**{**{k: v for k, v in saved.items() if k in known}, **changes, "resume": False})


def load_run(run_dir: str | os.PathLike, step: Optional[int] = None,
             **overrides: Any) -> tuple[TrainArgs, Problem, MetaState]:
  """Settings, problem and checkpointed state (the latest, or the kept one at ``step``) of a run
  directory.

  ``overrides`` replace resumable settings (e.g. ``eval_tasks``, ``data_dir``) or the
  ``TEST_CHANGES``: the run's model was trained at its ``train_shots`` (saved with the run),
  so it can be tested on tasks with any number of ``shots`` per class (and inner mini-batches
  of ``eval_inner_batch`` at test), and on another split's classes (``eval_split``: its
  ``train_split`` tells a gap between the training and the test classes from a model that
  is worse on both).
  """
  unknown = set(overrides) - set(RESUMABLE_CHANGES) - set(TEST_CHANGES)
  if unknown:
    raise ValueError(f"cannot override {sorted(unknown)} of a saved run")
  given = {k: v for k, v in overrides.items() if v is not None}
  trained = saved_args(run_dir, **{k: v for k, v in given.items() if k not in TEST_CHANGES})
  args = dataclasses.replace(trained, **{k: v for k, v in given.items() if k in TEST_CHANGES})
  problem = build(args)
  mngr = checkpoint.manager(Path(run_dir) / "checkpoints", create=False)
  return args, problem, checkpoint.restore(mngr, problem.state, step=step, fingerprint=fingerprint(trained))


DIVERGENCE_FACTOR = 100.0  # a task diverged when its query loss is non-finite or above this × the median reference


def summarize(results: dict[str, np.ndarray]) -> dict:
  """Mean, 95% CI and median of every per-task metric, and the tasks that diverged.

  A task diverged when its query ``loss`` is non-finite or above
  ``DIVERGENCE_FACTOR`` × the median of ``loss_before`` (the loss at the
  initialisation; ``loss`` itself for learners without it). Such tasks make the mean
  meaningless while the median stays honest, so both are reported (NaN counts as +inf there).
  """
  summary = {}
  for name, values in results.items():
    summary[f"eval_{name}"], summary[f"eval_{name}_ci95"] = mean_and_ci95(values)
    values = np.asarray(values, np.float64)
    summary[f"eval_{name}_median"] = float(np.median(np.where(np.isnan(values), np.inf, values)))  # NaN: worst
  loss = np.asarray(results["loss"], np.float64)
  reference = np.asarray(results.get("loss_before", loss), np.float64)
  threshold = DIVERGENCE_FACTOR * float(np.median(np.abs(reference[np.isfinite(reference)]))) \
      if np.isfinite(reference).any() else float("inf")
  summary["eval_diverged_tasks"] = int(np.sum(~np.isfinite(loss) | (loss > threshold)))
  summary["eval_divergence_threshold"] = threshold
  return summary


def eval_file_name(args: TrainArgs, step: int, inner_steps: bool, split_named: bool = False) -> str:
  """``eval-<step>-<tasks>tasks-<shots>shot-<queries>queries[-<n>inner][-<split>].json``: one file per
  evaluation setting (the split is named when ``split_named``: another than the run's)."""
  name = f"eval-{step}-{args.eval_tasks}tasks-{args.shots}shot-{args.eval_queries}queries"
  if inner_steps:
    name += f"-{args.eval_inner_steps or args.inner_steps}inner"
  if split_named:
    name += f"-{args.eval_split}"
  return name + ".json"


def report(args: TrainArgs, problem: Problem, state: MetaState, log: Callable[[str], None] = print,
           train_time: Optional[float] = None, out_name: str = "summary.json",
           warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr), split_named: bool = False) -> dict:
  """Evaluates on ``args.eval_tasks`` new tasks, logs one line (naming the split when ``split_named``;
  and a warning when tasks diverged, see :func:`summarize`), writes ``out_name`` in the run
  directory; returns the summary."""
  results = evaluate(problem, state, args.eval_tasks, args.seed + 10_000, args.eval_inner_steps)
  summary = {"dataset": args.dataset, "algo": args.algo, "steps": int(state.step), "eval_tasks": args.eval_tasks,
             "shots": args.shots, "train_shots": args.train_shots, "eval_queries": args.eval_queries}
  if args.dataset != "sinusoid":
    summary["eval_split"] = args.eval_split
  if problem.entry.inner_steps:
    summary["eval_inner_steps"] = args.eval_inner_steps or args.inner_steps
  if train_time is not None:
    summary["train_time_s"] = round(train_time, 2)
  summary.update(summarize(results))
  classification = "eval_accuracy" in summary
  name, label, unit, fmt = ("accuracy", "accuracy", "%", ".2f") if classification else ("loss", "MSE", "", ".3f")
  show = lambda key: f"{(100 if classification else 1) * summary[key]:{fmt}}"
  line = f"{label} {show(f'eval_{name}')}{unit} ± {show(f'eval_{name}_ci95')} (95% CI), median {show(f'eval_{name}_median')}{unit}"
  if f"eval_{name}_before" in summary:
    line += f", before adaptation {show(f'eval_{name}_before')}{unit}"
  shape = f"{args.ways}-way {args.shots}-shot" if classification else f"{args.shots}-shot"
  if args.train_shots != args.shots:
    shape += f" of a {args.train_shots}-shot-trained model"
  if problem.entry.inner_steps:
    shape += f", {summary['eval_inner_steps']} inner step(s)"
  if split_named:
    shape += f", {args.eval_split} split"
  trained = f"; trained in {train_time:.1f} s" if train_time is not None else ""
  log(f"eval on {args.eval_tasks} new {args.dataset} tasks ({shape}) after "
      f"{int(state.step)} meta-steps: {line}{trained}")
  if summary["eval_diverged_tasks"]:
    warn(f"warning: {summary['eval_diverged_tasks']} of {args.eval_tasks} tasks diverged (query loss non-finite "
         f"or above {summary['eval_divergence_threshold']:.3g}, {DIVERGENCE_FACTOR:g}× the median loss before "
         f"adaptation); the mean is dominated by them, the median loss is {summary['eval_loss_median']:.4g}")
  if args.out_dir:
    (Path(args.out_dir) / out_name).write_text(json.dumps(summary, indent=2))
  return summary
