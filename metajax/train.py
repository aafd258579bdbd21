"""The training loop behind ``metajax train``: chunks of fused meta-steps on
device, a progress bar, JSON-lines metrics, and a final evaluation on new tasks
with a 95% confidence interval."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metajax import checkpoint, learned_optimizer, learner, maml, metric, reptile, rnn
from metajax.core import MetaState, Task, distributed, losses, mean_and_ci95
from metajax.core.validate import check_positive_int
from metajax.data import episodes, omniglot, sinusoid
from metajax.models import MLP, Conv4, functional

ALGORITHMS: dict[str, tuple[Callable[..., maml.MAMLConfig], Any]] = {
    "maml": (maml.MAMLConfig, maml),
    "fomaml": (maml.fomaml, maml),
    "meta-sgd": (maml.meta_sgd, maml),
    "anil": (maml.anil, maml),
    "maml++": (maml.maml_plus_plus, maml),
    "reptile": (maml.MAMLConfig, reptile),
    "protonet": (metric.prototypical, metric),
    "matching": (metric.matching, metric),
    "relation": (metric.relation, metric),
    "rnn": (rnn.black_box, learner),
    "meta-lstm": (rnn.meta_lstm, learner),
    "learned-opt": (learned_optimizer.LearnedOptimizerConfig, learned_optimizer),
}
METRIC_ALGORITHMS = ("protonet", "matching", "relation")
NO_INNER_LOOP = METRIC_ALGORITHMS + ("rnn",)  # learners that adapt without gradient steps
RECURRENT_ALGORITHMS = ("rnn", "meta-lstm", "learned-opt")

# Per-dataset defaults for options left unset: the MAML paper's settings.
DATASET_DEFAULTS = {
    "sinusoid": dict(steps=70_000, meta_batch=25, shots=10, queries=10, inner_lr=0.01,
                     eval_tasks=1000, eval_queries=100, chunk=1000),
    "omniglot": dict(steps=2000, meta_batch=32, shots=1, queries=15, inner_lr=0.4,
                     eval_tasks=600, eval_queries=15, chunk=10),
}


@dataclasses.dataclass(frozen=True)
class TrainArgs:
  """What ``metajax train`` runs. ``None`` fields take ``DATASET_DEFAULTS``."""

  dataset: str = "sinusoid"
  data_dir: Optional[str] = None
  algo: str = "maml"
  steps: Optional[int] = None
  meta_batch: Optional[int] = None
  ways: int = 5
  shots: Optional[int] = None
  queries: Optional[int] = None
  inner_steps: int = 1
  inner_lr: Optional[float] = None
  outer_lr: float = 1e-3
  clip_grad_norm: Optional[float] = None
  width: int = 64
  eval_tasks: Optional[int] = None
  eval_queries: Optional[int] = None
  eval_inner_steps: Optional[int] = None
  train_split: str = "trainval"
  eval_split: str = "test"
  seed: int = 0
  chunk: Optional[int] = None
  task_strategy: str = "auto"
  devices: str = "1"
  out_dir: Optional[str] = None
  resume: bool = False
  val_every: int = 0
  val_tasks: int = 100
  checkpoint_every: int = 1
  keep_checkpoints: int = 3

  def __post_init__(self):
    if self.dataset not in DATASET_DEFAULTS:
      raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}")
    if self.algo not in ALGORITHMS:
      raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {sorted(ALGORITHMS)}")
    if self.algo in METRIC_ALGORITHMS and self.dataset == "sinusoid":
      raise ValueError(f"{self.algo} is a classifier; use it with --dataset omniglot")
    for name, value in DATASET_DEFAULTS[self.dataset].items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    for name in ("steps", "meta_batch", "ways", "shots", "queries", "inner_steps", "eval_tasks",
                 "eval_queries", "chunk", "width", "checkpoint_every", "keep_checkpoints", "val_tasks"):
      check_positive_int(getattr(self, name), f"--{name.replace('_', '-')}")
    if isinstance(self.val_every, bool) or not isinstance(self.val_every, int) or self.val_every < 0:
      raise ValueError(f"--val-every must be a non-negative integer, got {self.val_every!r}")
    if self.devices != "all" and not (self.devices.isdigit() and int(self.devices) >= 1):
      raise ValueError(f"--devices must be 'all' or a positive integer, got {self.devices!r}")
    if self.resume and not self.out_dir:
      raise ValueError("--resume needs the --out-dir of the run to continue")
    for name in ("inner_lr", "outer_lr") + (("clip_grad_norm",) if self.clip_grad_norm is not None else ()):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive finite number, got {value!r}")


# Options that may differ between a run and its resumption (everything else must match).
RESUMABLE_CHANGES = ("steps", "resume", "devices", "eval_tasks", "eval_queries", "eval_inner_steps", "out_dir",
                     "data_dir", "checkpoint_every", "keep_checkpoints", "val_every", "val_tasks")
RUN_FILE = "run.json"


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


class Problem(NamedTuple):
  """A configured learner and its data."""

  config: maml.MAMLConfig | learner.LearnerConfig | learned_optimizer.LearnedOptimizerConfig
  algo: Any
  state: MetaState
  sample_fn: Callable[..., Task]
  train_data: Optional[jax.Array]
  eval_tasks: Callable[[jax.Array, int], Task]  # (key, n) -> held-out task batch


def _accuracy(logits: jax.Array, labels: jax.Array) -> dict:
  return {"accuracy": losses.accuracy(logits, labels)}


def _metric_learner(args: TrainArgs, factory: Callable, optimizer: optax.GradientTransformation,
                    key: jax.Array, x0: jax.Array) -> tuple[learner.LearnerConfig, Any]:
  """A Conv4 embedding (no head); Relation networks add an MLP relation module over
  concatenated (class, query) embeddings."""
  embed = Conv4(num_classes=None, width=args.width)
  k_embed, k_rel = jax.random.split(key)
  params, embed_fn = functional(embed, embed.init(k_embed, x0))
  common = dict(optimizer=optimizer, task_strategy=args.task_strategy)
  if args.algo != "relation":
    return factory(embed_fn, args.ways, **common), params
  dim = embed_fn(params, x0).shape[-1]
  relation = MLP(hidden=(8,), out=1)
  rel_params, rel_fn = functional(relation, relation.init(k_rel, jnp.zeros((1, 2 * dim))))
  return factory(embed_fn, rel_fn, args.ways, **common), {"embed": params, "relation": rel_params}


def _recurrent_learner(args: TrainArgs, key: jax.Array, x0: jax.Array, optimizer: optax.GradientTransformation,
                       model: nn.Module, ways: Optional[int]) -> tuple[Any, Any]:
  """Config and parameters of ``rnn``, ``meta-lstm`` or ``learned-opt``; ``model`` is the
  learner (or, for ``rnn``, the encoder of images; ``None`` on vectors)."""
  loss = losses.mse if ways is None else losses.cross_entropy
  k_model, k_meta = jax.random.split(key)
  if args.algo == "rnn":
    module = rnn.BlackBoxRNN(out=ways or 1, hidden=args.width if ways is None else 2 * args.width,
                             encoder=model)
    y0 = jnp.zeros((x0.shape[0], ways or 1))
    params, apply_fn = functional(module, module.init(k_model, x0, y0, x0))
    return rnn.black_box(apply_fn, ways, optimizer=optimizer, task_strategy=args.task_strategy), params
  params, apply_fn = functional(model, model.init(k_model, x0))
  if args.algo == "meta-lstm":
    cell = rnn.MetaLSTMCell()
    theta = jax.flatten_util.ravel_pytree(params)[0]
    cell_params = cell.init(k_meta, cell.initial_state(theta), theta, jnp.float32(0.0))["params"]
    config = rnn.meta_lstm(apply_fn, cell, steps=args.inner_steps, inner_loss_fn=loss, ways=ways,
                           optimizer=optimizer, task_strategy=args.task_strategy)
    return config, {"learner": params, "meta_lstm": cell_params}
  net = learned_optimizer.LSTMOptimizerNet()
  init_fn = lambda k: model.init(k, x0)["params"]
  config = learned_optimizer.LearnedOptimizerConfig(net, apply_fn, init_fn, loss_fn=loss, horizon=args.inner_steps,
                                                    truncation=args.inner_steps, optimizer=optimizer)
  return config, net.init_params(k_meta)


def build(args: TrainArgs) -> Problem:
  """The learner, its initial state and its task samplers for ``args.dataset``."""
  factory, algo = ALGORITHMS[args.algo]
  k_init, k_state = jax.random.split(jax.random.PRNGKey(args.seed))
  optimizer = optax.adam(args.outer_lr)
  if args.clip_grad_norm is not None:
    optimizer = optax.chain(optax.clip_by_global_norm(args.clip_grad_norm), optimizer)
  common = dict(optimizer=optimizer, inner_lr=args.inner_lr,
                inner_steps=args.inner_steps, eval_inner_steps=args.eval_inner_steps,
                task_strategy=args.task_strategy)
  if args.dataset == "sinusoid":
    x0 = jnp.zeros((args.shots, 1))
    model = MLP(hidden=(40, 40), out=1)
    if args.algo in RECURRENT_ALGORITHMS:
      config, params = _recurrent_learner(args, k_init, x0, optimizer, None if args.algo == "rnn" else model, None)
    else:
      params, apply_fn = functional(model, model.init(k_init, x0))
      config = factory(apply_fn, **common)
    sample_fn = functools.partial(sinusoid.sample, num_tasks=args.meta_batch, shots=args.shots,
                                  queries=args.queries)
    eval_tasks = lambda key, n: sinusoid.sample(key, n, args.shots, args.eval_queries)
    return Problem(config, algo, algo.init(config, params, k_state), sample_fn, None, eval_tasks)
  train = omniglot.load(args.train_split, args.data_dir)
  test = omniglot.load(args.eval_split, args.data_dir)
  episodes.check_episode_shape(*train.images.shape[:2], args.ways, args.shots, args.queries)
  episodes.check_episode_shape(*test.images.shape[:2], args.ways, args.shots, args.eval_queries)
  x0 = jnp.zeros((args.ways * args.shots,) + train.images.shape[2:] + (1,))
  if args.algo in METRIC_ALGORITHMS:
    config, params = _metric_learner(args, factory, optimizer, k_init, x0)
  elif args.algo in RECURRENT_ALGORITHMS:
    model = Conv4(num_classes=None if args.algo == "rnn" else args.ways, width=args.width)
    config, params = _recurrent_learner(args, k_init, x0, optimizer, model, args.ways)
  else:
    model = Conv4(num_classes=args.ways, width=args.width)
    params, apply_fn = functional(model, model.init(k_init, x0))
    config = factory(apply_fn, loss_fn=losses.cross_entropy, metrics_fn=_accuracy, **common)
  sample_fn = functools.partial(episodes.sample, num_tasks=args.meta_batch, ways=args.ways,
                                shots=args.shots, queries=args.queries)
  test_images = jnp.asarray(test.images)
  eval_tasks = lambda key, n: episodes.sample(key, test_images, num_tasks=n, ways=args.ways,
                                              shots=args.shots, queries=args.eval_queries)
  return Problem(config, algo, algo.init(config, params, k_state), sample_fn,
                 jnp.asarray(train.images), eval_tasks)


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
  """The saved settings of a run directory, with errors naming the folder or file."""
  run_file = run_dir / RUN_FILE
  if not run_file.is_file():
    raise FileNotFoundError(f"{run_dir} holds no {RUN_FILE}; is it a metajax run directory?")
  try:
    return json.loads(run_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{run_file} is not valid JSON ({err})") from err


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


def _truncate_metrics(path: Path, step: int) -> None:
  """Drops records after ``step`` (written after the checkpoint a resumed run restarts from)."""
  if path.exists():
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def train(args: TrainArgs, problem: Optional[Problem] = None,
          on_chunk: Optional[Callable[[int, MetaState, float], None]] = None) -> Trained:
  """Meta-trains for ``args.steps`` steps in fused chunks, with a progress bar.

  With ``args.out_dir`` it writes ``run.json`` (the settings), ``metrics.jsonl``
  and Orbax checkpoints under ``checkpoints/`` every ``checkpoint_every`` chunks
  and at the end; ``args.resume`` restores the latest checkpoint and continues
  with the same chunks, ending bit-identical to an uninterrupted run.
  ``problem`` defaults to ``build(args)``; ``on_chunk(steps_done, state,
  train_seconds)`` runs after every chunk (its time is not counted).

  Raises:
    NonFiniteLoss: naming the first meta-step whose loss is NaN or infinite;
      checkpoints written before it are kept.
    Interrupted: on SIGINT, at the end of the running chunk, after checkpointing it.
  """
  out = _prepare_run_dir(args)
  problem = build(args) if problem is None else problem
  state = problem.state
  mngr = None
  if out is not None:
    mngr = checkpoint.manager(out / "checkpoints", max_to_keep=args.keep_checkpoints)
    if args.resume:
      state = checkpoint.restore(mngr, state)
      _truncate_metrics(out / "metrics.jsonl", int(state.step))
  mesh = None
  if args.devices != "1":
    mesh = distributed.task_mesh("all" if args.devices == "all" else int(args.devices))
    distributed.check_divisible(args.meta_batch, mesh)
    state = distributed.replicate(state, mesh)
  done = int(state.step)
  if done > args.steps:
    raise ValueError(f"the checkpoint is at step {done}, beyond --steps {args.steps}")
  metrics_file = open(out / "metrics.jsonl", "a") if out is not None else None
  start = time.perf_counter()
  paused = 0.0
  chunks = 0
  stop = _DeferredInterrupt()
  try:
    with tqdm(total=args.steps, initial=done, desc=f"{args.algo} {args.dataset}", unit="step") as bar:
      while done < args.steps:
        n = min(args.chunk, args.steps - done)
        new_state, metrics = maml.train_steps(state, problem.train_data, config=problem.config,
                                              sample_fn=problem.sample_fn, num_steps=n,
                                              step_fn=problem.algo.meta_step, mesh=mesh)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
        if bad.size:
          raise NonFiniteLoss(done + int(bad[0]) + 1)
        state, done, chunks = new_state, done + n, chunks + 1
        record = {"step": done, **{k: float(v.mean()) for k, v in metrics.items()},
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
          checkpoint.save(mngr, state)
        bar.set_postfix({k: f"{record[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                         if k in record})
        bar.update(n)
        if on_chunk is not None:
          t0 = time.perf_counter()
          on_chunk(done, state, record["time_s"])
          paused += time.perf_counter() - t0
        if stop.requested:
          if mngr is not None and mngr.latest_step() != done:
            checkpoint.save(mngr, state)
          raise Interrupted(done)
  finally:
    stop.restore()
    if metrics_file:
      metrics_file.close()
  return Trained(problem, state, time.perf_counter() - start - paused)


def evaluate(problem: Problem, state: MetaState, num_tasks: int, seed: int,
             inner_steps: Optional[int] = None, chunk: int = 100) -> dict[str, np.ndarray]:
  """Per-task metrics on ``num_tasks`` held-out tasks, evaluated ``chunk`` tasks at a time."""
  key = jax.random.PRNGKey(seed)
  parts = []
  for start in range(0, num_tasks, chunk):
    n = min(chunk, num_tasks - start)
    batch = problem.eval_tasks(jax.random.fold_in(key, start), n)
    parts.append(problem.algo.evaluate(state, batch, config=problem.config, inner_steps=inner_steps))
  return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def run(args: TrainArgs, log: Callable[[str], None] = print) -> dict:
  """Meta-trains, evaluates on ``eval_tasks`` new tasks, returns the summary dict."""
  problem, state, train_time = train(args)
  return report(args, problem, state, log, train_time)


def load_run(run_dir: str | os.PathLike, **overrides: Any) -> tuple[TrainArgs, Problem, MetaState]:
  """Settings, problem and latest checkpointed state of a run directory.

  ``overrides`` replace resumable settings (e.g. ``eval_tasks``, ``data_dir``).
  """
  saved = read_run_file(Path(run_dir))
  unknown = set(overrides) - set(RESUMABLE_CHANGES)
  if unknown:
    raise ValueError(f"cannot override {sorted(unknown)} of a saved run")
  known = {f.name for f in dataclasses.fields(TrainArgs)}
  args = TrainArgs(**{**{k: v for k, v in saved.items() if k in known},
                      **{k: v for k, v in overrides.items() if v is not None}, "resume": False})
  problem = build(args)
  mngr = checkpoint.manager(Path(run_dir) / "checkpoints", create=False)
  return args, problem, checkpoint.restore(mngr, problem.state)


def report(args: TrainArgs, problem: Problem, state: MetaState, log: Callable[[str], None] = print,
           train_time: Optional[float] = None) -> dict:
  """Evaluates on ``args.eval_tasks`` new tasks, logs one line, writes ``summary.json``; returns it."""
  results = evaluate(problem, state, args.eval_tasks, args.seed + 10_000, args.eval_inner_steps)
  summary = {"dataset": args.dataset, "algo": args.algo, "steps": int(state.step),
             "eval_tasks": args.eval_tasks}
  if train_time is not None:
    summary["train_time_s"] = round(train_time, 2)
  for name, values in results.items():
    summary[f"eval_{name}"], summary[f"eval_{name}_ci95"] = mean_and_ci95(values)
  classification = "eval_accuracy" in summary
  name, label, unit, fmt = ("accuracy", "accuracy", "%", ".2f") if classification else ("loss", "MSE", "", ".3f")
  show = lambda key: f"{(100 if classification else 1) * summary[key]:{fmt}}"
  line = f"{label} {show(f'eval_{name}')}{unit} ± {show(f'eval_{name}_ci95')} (95% CI)"
  if f"eval_{name}_before" in summary:
    line += f", before adaptation {show(f'eval_{name}_before')}{unit}"
  shape = f"{args.ways}-way {args.shots}-shot" if classification else f"{args.shots}-shot"
  if args.algo not in NO_INNER_LOOP:
    shape += f", {args.eval_inner_steps or args.inner_steps} inner step(s)"
  trained = f"; trained in {train_time:.1f} s" if train_time is not None else ""
  log(f"eval on {args.eval_tasks} new {args.dataset} tasks ({shape}) after "
      f"{int(state.step)} meta-steps: {line}{trained}")
  if args.out_dir:
    (Path(args.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
