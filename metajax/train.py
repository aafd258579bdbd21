"""The training loop behind ``metajax train``: chunks of fused meta-steps, a
progress bar, JSON-lines metrics, and a final evaluation with a 95% CI."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metajax import maml, reptile
from metajax.core import MetaState, mean_and_ci95
from metajax.data import sinusoid
from metajax.models import MLP, functional

ALGORITHMS: dict[str, tuple[Callable[..., maml.MAMLConfig], Any]] = {
    "maml": (maml.MAMLConfig, maml),
    "fomaml": (maml.fomaml, maml),
    "meta-sgd": (maml.meta_sgd, maml),
    "anil": (maml.anil, maml),
    "maml++": (maml.maml_plus_plus, maml),
    "reptile": (maml.MAMLConfig, reptile),
}


@dataclasses.dataclass(frozen=True)
class TrainArgs:
  """What ``metajax train`` runs (defaults: the MAML paper's sinusoid protocol)."""

  algo: str = "maml"
  steps: int = 70_000
  meta_batch: int = 25
  shots: int = 10
  queries: int = 10
  inner_steps: int = 1
  inner_lr: float = 0.01
  outer_lr: float = 1e-3
  eval_tasks: int = 1000
  eval_queries: int = 100
  eval_inner_steps: Optional[int] = None
  seed: int = 0
  chunk: int = 1000
  task_strategy: str = "auto"
  out_dir: Optional[str] = None

  def __post_init__(self):
    if self.algo not in ALGORITHMS:
      raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {sorted(ALGORITHMS)}")
    for name in ("steps", "meta_batch", "shots", "queries", "inner_steps", "eval_tasks",
                 "eval_queries", "chunk"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
    for name in ("inner_lr", "outer_lr"):
      value = getattr(self, name)
      if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name.replace('_', '-')} must be a positive finite number, got {value!r}")


class NonFiniteLoss(RuntimeError):
  """Raised when a meta-step produces a NaN or infinite loss."""


def build(args: TrainArgs) -> tuple[maml.MAMLConfig, Any, MetaState, Callable]:
  """``(config, algorithm module, initial state, task sampler)`` for sinusoid regression."""
  factory, algo = ALGORITHMS[args.algo]
  key = jax.random.PRNGKey(args.seed)
  k_init, k_state = jax.random.split(key)
  model = MLP(hidden=(40, 40), out=1)
  params, apply_fn = functional(model, model.init(k_init, jnp.zeros((1, 1))))
  config = factory(apply_fn, optimizer=optax.adam(args.outer_lr), inner_lr=args.inner_lr,
                   inner_steps=args.inner_steps, eval_inner_steps=args.eval_inner_steps,
                   task_strategy=args.task_strategy)
  sample_fn = functools.partial(sinusoid.sample, num_tasks=args.meta_batch, shots=args.shots,
                                queries=args.queries)
  return config, algo, maml.init(config, params, k_state), sample_fn


def run(args: TrainArgs, log: Callable[[str], None] = print) -> dict:
  """Meta-trains, evaluates on ``eval_tasks`` new tasks, returns the summary dict."""
  config, algo, state, sample_fn = build(args)
  out = Path(args.out_dir) if args.out_dir else None
  metrics_file = None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = open(out / "metrics.jsonl", "w")
  start = time.perf_counter()
  try:
    with tqdm(total=args.steps, desc=f"{args.algo} sinusoid", unit="step") as bar:
      done = 0
      while done < args.steps:
        n = min(args.chunk, args.steps - done)
        state, metrics = maml.train_steps(state, config=config, sample_fn=sample_fn, num_steps=n,
                                          step_fn=algo.meta_step)
        losses = np.asarray(metrics["loss"])
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
          raise NonFiniteLoss(f"non-finite loss at meta-step {done + int(bad[0]) + 1}; "
                              "lower the learning rates")
        done += n
        record = {"step": done, "loss": float(losses.mean()),
                  "time_s": round(time.perf_counter() - start, 3)}
        if metrics_file:
          metrics_file.write(json.dumps(record) + "\n")
          metrics_file.flush()
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update(n)
  finally:
    if metrics_file:
      metrics_file.close()
  train_time = time.perf_counter() - start
  eval_batch = sinusoid.sample(jax.random.PRNGKey(args.seed + 10_000), args.eval_tasks,
                               args.shots, args.eval_queries)
  results = algo.evaluate(state, eval_batch, config=config)
  summary = {"algo": args.algo, "steps": args.steps, "train_time_s": round(train_time, 2)}
  for name in ("loss_before", "loss"):
    mean, half = mean_and_ci95(results[name])
    summary[f"eval_{name}"] = mean
    summary[f"eval_{name}_ci95"] = half
  log(f"eval on {args.eval_tasks} new tasks ({args.shots}-shot, "
      f"{args.eval_inner_steps or args.inner_steps} inner step(s)): "
      f"MSE {summary['eval_loss']:.3f} ± {summary['eval_loss_ci95']:.3f} (95% CI), "
      f"before adaptation {summary['eval_loss_before']:.3f}; trained in {train_time:.1f} s")
  if out is not None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
