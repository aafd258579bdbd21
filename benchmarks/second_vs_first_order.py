"""Second- vs first-order MAML: speed, compile time, memory and share of the matmul peak on
the sinusoid, Omniglot-shaped and mini-ImageNet-shaped configs (with and without remat), and
Omniglot accuracy after a fixed step budget. The PyTorch peers: benchmarks/vs_pytorch.py.

  python benchmarks/second_vs_first_order.py
  python benchmarks/second_vs_first_order.py --accuracy-steps 100  # + Omniglot 5w1s accuracy

Configs are those of benchmarks/maml_speed.py (random inputs; the CPU defaults: task strategy
and conv implementation "auto"). Writes results/second_vs_first_order.json and .png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DEFAULT_DATA, TEST_SEED, machine, run_json_lines, save  # noqa: E402

CONFIGS = ("sinusoid", "omniglot", "mini")


def metajax_rows(config: str, order: str, remat: bool, repeats: int) -> list[dict]:
  spec = dict(name=config, order=order, strategy="auto", remat=remat, conv_impl="auto",
              repeats=repeats if config != "sinusoid" else 5)
  return run_json_lines([sys.executable, str(HERE / "maml_speed.py"), "--one", json.dumps(spec)])


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
  """This machine's measured float32 matmul throughput (best of ``repeats``, n×n @ n×n)."""
  import time

  import jax
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def accuracy_rows(steps: int, data_dir: str | None) -> list[dict]:
  """Omniglot 5w1s (paper settings) after ``steps`` meta-steps, second and first order."""
  from metajax.core import mean_and_ci95
  from metajax.harness.args import TrainArgs
  from metajax.harness.run import evaluate, train
  rows = []
  for algo in ("maml", "fomaml"):
    args = TrainArgs(dataset="omniglot", data_dir=data_dir, algo=algo, steps=steps, chunk=max(1, steps // 4),
                     eval_inner_steps=3, eval_tasks=200)
    trained = train(args)
    mean, ci = mean_and_ci95(evaluate(trained.problem, trained.state, 200, seed=TEST_SEED)["accuracy"])
    rows.append({"algo": algo, "steps": steps, "train_time_s": trained.train_time_s, "accuracy": mean, "ci95": ci})
    print(f"omniglot 5w1s {algo:7s} {steps} steps: {100 * mean:.2f} ± {100 * ci:.2f} % "
          f"({trained.train_time_s:.0f} s)", flush=True)
  return rows


def plot(rows: list[dict], path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  configs = [c for c in ("sinusoid", "omniglot", "mini") if any(r["config"] == c for r in rows)]
  fig, axes = plt.subplots(1, len(configs), figsize=(4 * len(configs), 3.6), squeeze=False)
  for ax, config in zip(axes[0], configs):
    labels, values = [], []
    for r in rows:
      if r["config"] == config:
        labels.append(f"metajax {r['order'][:2]}{' remat' if r['remat'] else ''}")
        values.append(r["step_s_median"] * 1e3)
    ax.barh(labels, values)
    ax.set_xscale("log")
    ax.set_xlabel("ms per meta-step (log)")
    ax.set_title(config)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["sinusoid", "omniglot", "mini"], choices=CONFIGS)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--accuracy-steps", type=int, default=0, help="Omniglot accuracy budget (0: skip)")
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
  ns = parser.parse_args()
  rows = []
  peak = matmul_flops_per_s()
  print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
  for config in ns.configs:
    for order in ("second", "first"):
      for remat in ((False, True) if config != "sinusoid" else (False,)):
        for r in metajax_rows(config, order, remat, ns.repeats):
          r["fraction_of_matmul_peak"] = (r["xla_flops_per_step"] or 0.0) / r["step_s_median"] / peak
          rows.append(r)
          print(f"metajax   {config:8s} {order:6s} remat={remat!s:5s} {r['step_s_median'] * 1e3:9.1f} ms/step "
                f"compile {r['compile_s']:5.1f} s  XLA temp {r['xla_temp_mb']} MB  RSS {r['peak_rss_mb']:.0f} MB  "
                f"{100 * r['fraction_of_matmul_peak']:.0f}% of matmul peak",
                flush=True)
  png = HERE / "results" / "second_vs_first_order.png"
  plot(rows, png)
  payload = {"machine": machine(), "args": vars(ns), "matmul_flops_per_s": peak, "metajax": rows}
  print("saved", save("second_vs_first_order", payload), "and", png)  # before the long accuracy runs
  if ns.accuracy_steps:
    payload["accuracy"] = accuracy_rows(ns.accuracy_steps, ns.data_dir)
    print("saved", save("second_vs_first_order", payload))


if __name__ == "__main__":
  main()
