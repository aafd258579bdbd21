"""Helpers shared by the benchmark scripts: environment facts and JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax

from metajax.core.xla_cpu import use_fast_cpu_convolutions

use_fast_cpu_convolutions()  # the library's documented CPU setting, as the CLI applies it
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
CURVE_SEED = 123  # key of every learning curve's tasks (train_with_curve)
TEST_SEED = 10_000  # key of every benchmark's final test tasks (plus its --seed)


def machine() -> dict:
  """Backend, device, CPU model, core count and package versions."""
  cpu = platform.processor()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import flax
  import optax
  return {
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "flax": flax.__version__, "optax": optax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "git": STARTED_ON,
  }


def _commit() -> str:
  """The checkout's short commit, ``+changes`` when tracked code differs from it (results and Markdown
  aside: runs rewrite them); empty where there is no ``git`` or no ``.git`` (a lent machine's copy)."""
  git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
  try:
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    code = (":/", ":(top,exclude)benchmarks/results", ":(top,exclude,glob)**/*.md")
    return head + ("+changes" if head and git("diff", "--quiet", "HEAD", "--", *code).returncode == 1 else "")
  except OSError:
    return ""


# The commit of the code this process runs, read when it starts: a run of hours outlives later commits.
STARTED_ON = _commit()


def run_json_lines(cmd: list[str]) -> list[dict]:
  """Runs ``cmd`` and returns the JSON objects it printed one per line (none if it failed)."""
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    print(f"FAILED: {' '.join(cmd)}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return []
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def call_seconds(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` calls of ``fn()``, each blocked until ready, after one untimed call
  (compilation); sorted, so ``[0]`` is the fastest and ``[len // 2]`` the median."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return sorted(times)


def save(name: str, payload: dict) -> Path:
  """Writes ``benchmarks/results/<name>.json`` and returns its path."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps(payload, indent=2))
  return path


class _BudgetSpent(Exception):
  """Raised at a curve point once the training-time or wall-time budget is spent."""


def train_with_curve(args, problem, *, curve_tasks: int, budget_minutes: Optional[float] = None,
                     wall_minutes: Optional[float] = None, eval_chunk: int = 100, curve: Optional[list] = None,
                     on_point: Optional[Callable[[list], None]] = None, label: str = ""):
  """Trains ``problem`` as ``metajax.harness.run.train`` does, with a learning curve: after every
  chunk, the accuracy on ``curve_tasks`` test tasks (appended to ``curve``, then ``on_point(curve)``).
  Stops at the first chunk past ``budget_minutes`` of training time (all resumptions counted), past
  ``wall_minutes`` of this call's wall time (compilation and curve evaluations included), or at the end
  of the chunk running at a SIGINT (Ctrl-C, ``kill -INT``; a second one during the caller's test stops it).

  Returns ``(state, meta_steps, train_time_s, curve)`` of where training stopped.
  """
  from metajax.core import mean_and_ci95
  from metajax.harness.run import Interrupted, evaluate, train
  curve = [] if curve is None else curve
  reached = {}  # the last curve point's
  started = time.monotonic()

  def on_chunk(step, state, seconds):
    mean, ci = mean_and_ci95(evaluate(problem, state, curve_tasks, seed=CURVE_SEED, chunk=eval_chunk)["accuracy"])
    curve[:] = [p for p in curve if p["step"] < step] + [
        {"step": step, "train_time_s": round(seconds, 1), "accuracy": mean, "ci95": ci, "tasks": curve_tasks}]
    if on_point is not None:
      on_point(curve)
    print(f"  {label} step {step:7d} {seconds:8.0f} s  test-task accuracy {100 * mean:.2f} ± {100 * ci:.2f}",
          flush=True)
    reached.update(steps=step, state=state, train_time_s=seconds)
    if (budget_minutes is not None and seconds >= 60 * budget_minutes) or (
        wall_minutes is not None and time.monotonic() - started >= 60 * wall_minutes):
      raise _BudgetSpent

  try:
    trained = train(args, problem, on_chunk=on_chunk)
    if not reached:  # resumed at its last step: no chunk left
      reached.update(steps=args.steps, state=trained.state, train_time_s=trained.train_time_s)
  except (_BudgetSpent, Interrupted):  # the state is at the last curve point, and checkpointed
    pass
  return reached["state"], reached["steps"], reached["train_time_s"], curve
