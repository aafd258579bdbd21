"""PNG figures of a run directory: learning curves, and for sinusoid runs the
MAML paper's figure (true function, support points, predictions after 0, 1 and
10 inner steps)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp


def _figure(width_px: int, height_px: int, nrows: int = 1, ncols: int = 1, dpi: int = 100):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if width_px < 50 or height_px < 50:
    raise ValueError(f"figure size {width_px}x{height_px} px is too small (at least 50x50)")
  return plt.subplots(nrows, ncols, figsize=(width_px / dpi, height_px / dpi), dpi=dpi, squeeze=False)


def _save(fig, path: Path) -> Path:
  import matplotlib.pyplot as plt
  fig.savefig(path)  # no bbox="tight": the PNG keeps the requested size
  plt.close(fig)
  return path


# learning_curves' panels: metrics.jsonl key -> (name in the legend, y-axis label, y scale)
PANELS = {
    "loss": ("loss", "query loss after adaptation", "log"),
    "accuracy": ("accuracy", "query accuracy after adaptation", "linear"),
    "grad_norm": ("gradient norm", "meta-gradient norm", "log"),
}


def learning_curves(run_dir: Path, width_px: int = 900, height_px: int = 400) -> Path:
  """``run_dir/curves.png``: training (and validation) loss and accuracy, and the meta-gradient's
  norm, against meta-steps; and each chunk's largest training loss and gradient norm where
  ``metrics.jsonl`` records them."""
  lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
  records = [json.loads(line) for line in lines if line.strip()]
  if not records:
    raise ValueError(f"{run_dir}/metrics.jsonl holds no records to plot")
  panels = [name for name in PANELS if any(name in r for r in records)]
  fig, axes = _figure(width_px, height_px, 1, len(panels))
  for ax, name in zip(axes[0], panels):
    shown, ylabel, yscale = PANELS[name]
    for prefix, style in (("", "-"), ("val_", "o--")):
      points = [(r["step"], r[prefix + name]) for r in records if prefix + name in r]
      if points:
        ax.plot(*zip(*points), style, label=f"{'validation' if prefix else 'train'} {shown}")
    worst = [(r["step"], r[f"{name}_max"]) for r in records if f"{name}_max" in r]
    if worst:
      ax.plot(*zip(*worst), ":", label=f"train {shown}, chunk's largest")
    ax.set_xlabel("meta-step")
    ax.set_ylabel(ylabel)
    ax.set_yscale(yscale)
    ax.legend()
  with warnings.catch_warnings():  # a small figure's panels cannot fit every label; it is drawn anyway
    warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
    fig.tight_layout()
  return _save(fig, run_dir / "curves.png")


def sinusoid_adaptation(run_dir: Path, width_px: int = 600, height_px: int = 400, seed: int = 1,
                        steps: tuple[int, ...] = (0, 1, 10)) -> Path:
  """``run_dir/sinusoid.png``: one new task, its support points and the learner's predictions
  (after 0, 1 and 10 inner steps for learners whose step count can be set; else its one prediction)."""
  from metajax.core import Task
  from metajax.data import sinusoid
  from metajax.harness.run import load_run

  args, problem, state = load_run(run_dir)
  if args.dataset != "sinusoid":
    raise ValueError(f"{run_dir} is a {args.dataset} run; the adaptation figure is for sinusoid")
  k_task, k_x = jax.random.split(jax.random.PRNGKey(seed))
  params = sinusoid.sample_params(k_task, 1)
  x_support = jax.random.uniform(k_x, (1, args.shots, 1), minval=-5.0, maxval=5.0)
  grid = jnp.linspace(-5.0, 5.0, 200)[None, :, None]
  task = Task(x_support[0], sinusoid.evaluate(params, x_support)[0], grid[0],
              sinusoid.evaluate(params, grid)[0])
  predict = jax.jit(problem.learner.predict, static_argnames="inner_steps")
  curves = {f"after {n} inner step{'s' if n != 1 else ''}": n for n in steps}
  if not problem.entry.eval_inner_steps:
    curves = {f"{args.algo} prediction": None}
  fig, axes = _figure(width_px, height_px)
  ax = axes[0, 0]
  ax.plot(grid[0, :, 0], task.y_query[:, 0], "k-", lw=2, label="true function")
  ax.plot(task.x_support[:, 0], task.y_support[:, 0], "k^", ms=8, label=f"{args.shots} support points")
  for label, n in curves.items():
    ax.plot(grid[0, :, 0], predict(state, task, inner_steps=n)[:, 0], "--", label=label)
  ax.set_xlabel("x")
  ax.set_ylabel("y")
  ax.legend(fontsize="small")
  fig.tight_layout()
  return _save(fig, run_dir / "sinusoid.png")
