"""Meta-step speed, compile time and peak memory of MAML, second vs first order,
for each task strategy, on random inputs.

Configs (issue: core):
  sinusoid  MLP 1-40-40-1, meta-batch 25, 10 shots, 10 queries, 1 inner step lr 0.01;
            200 meta-steps per compiled call (tasks drawn on device).
  omniglot  Conv4-64 (batch-stat BN), 28x28x1, 5-way 1-shot, 15 queries, meta-batch 32,
            1 inner step lr 0.4, Adam 1e-3.
  omniglot20  Conv4-64, 28x28x1, 20-way 1-shot, 1 query (the Omniglot table's MAML cell),
            meta-batch 16, 5 inner steps lr 0.1.
  mini      Conv4-32, 84x84x3, 5-way 1-shot, 15 queries, meta-batch 4, 5 inner steps lr 0.01.

--downsample stride measures the stride-2 Conv4 (MAML's own Omniglot network) instead of the
max-pooling one.

Every measurement runs in its own subprocess so that peak RSS is its own.

  python benchmarks/maml_speed.py                    # the default matrix
  python benchmarks/maml_speed.py --configs mini --strategies map --orders second --remat
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "sinusoid": dict(kind="mlp", meta_batch=25, shots=10, queries=10, inner_steps=1, inner_lr=0.01),
    "omniglot": dict(kind="conv", hw=28, channels=1, width=64, ways=5, shots=1, queries=15,
                     meta_batch=32, inner_steps=1, inner_lr=0.4),
    "omniglot20": dict(kind="conv", hw=28, channels=1, width=64, ways=20, shots=1, queries=1,
                       meta_batch=16, inner_steps=5, inner_lr=0.1),
    "mini": dict(kind="conv", hw=84, channels=3, width=32, ways=5, shots=1, queries=15,
                 meta_batch=4, inner_steps=5, inner_lr=0.01),
}


def step_flops(config, params, key, batch_or_sample, meta_batch: int) -> float:
  """XLA's FLOP count of one meta-step. XLA counts a loop body once, so this compiles the
  step for a single task with the inner loop unrolled and multiplies by the meta-batch."""
  import dataclasses

  import jax

  from metajax import maml
  batch = batch_or_sample(key) if callable(batch_or_sample) else batch_or_sample
  one = jax.tree.map(lambda x: x[:1], batch)
  single = dataclasses.replace(config, task_strategy="vmap", inner_unroll=True, remat=False)
  fn = jax.jit(lambda s, b: maml.meta_step(s, b, config=single))
  cost = fn.lower(maml.init(single, params, key), one).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) * meta_batch


def conv_problem(c: dict, conv_impl: str, key, downsample: str = "max_pool") -> tuple:
  """``(task_batch, params, apply_fn)``: random images and labels shaped by conv config ``c``
  and a Conv4 for them."""
  import jax
  import jax.numpy as jnp

  import metajax
  from metajax.core import Task

  ways, mb, hw, ch = c["ways"], c["meta_batch"], c["hw"], c["channels"]
  k1, k2 = jax.random.split(key)
  batch = Task(jax.random.normal(k1, (mb, ways * c["shots"], hw, hw, ch)),
               jnp.tile(jnp.repeat(jnp.arange(ways), c["shots"]), (mb, 1)),
               jax.random.normal(k2, (mb, ways * c["queries"], hw, hw, ch)),
               jnp.tile(jnp.repeat(jnp.arange(ways), c["queries"]), (mb, 1)))
  model = metajax.models.Conv4(num_classes=ways, width=c["width"], conv_impl=conv_impl, downsample=downsample)
  params, apply_fn = metajax.models.functional(model, model.init(key, batch.x_support[0]))
  return batch, params, apply_fn


def measure(name: str, order: str, strategy: str, remat: bool, conv_impl: str, repeats: int,
            downsample: str = "max_pool") -> dict:
  """One configuration, in this process."""
  from metajax.core.xla_cpu import use_fast_cpu_convolutions
  use_fast_cpu_convolutions()  # before any JAX computation, as the CLI does

  import jax
  import jax.numpy as jnp
  import optax

  import metajax
  from metajax import maml
  from metajax.core import losses
  from metajax.core.meta import resolve_strategy
  from metajax.data import sinusoid

  c = CONFIGS[name]
  key = jax.random.PRNGKey(0)
  common = dict(optimizer=optax.adam(1e-3), inner_lr=c["inner_lr"], inner_steps=c["inner_steps"],
                first_order=order == "first", task_strategy=strategy, remat=remat)
  if c["kind"] == "mlp":
    model = metajax.models.MLP()
    params, apply_fn = metajax.models.functional(model, model.init(key, jnp.zeros((1, 1))))
    config = maml.MAMLConfig(apply_fn, **common)
    sample = functools.partial(sinusoid.sample, num_tasks=c["meta_batch"], shots=c["shots"],
                               queries=c["queries"])
    per_call = 200
    state = maml.init(config, params, key)
    fn = jax.jit(lambda s: maml.train_steps(s, config=config, sample_fn=sample, num_steps=per_call))
    args = (state,)
  else:
    batch, params, apply_fn = conv_problem(c, conv_impl, key, downsample)
    config = maml.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, **common)
    per_call = 1
    fn = jax.jit(lambda s, b: maml.meta_step(s, b, config=config))
    args = (maml.init(config, params, key), batch)
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = compiled(*(out[0],) + args[1:])
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / per_call)
  times.sort()
  peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # before the FLOP count's compile
  flops = step_flops(config, params, key, sample if c["kind"] == "mlp" else batch, c["meta_batch"])
  return {
      "config": name, "order": order, "strategy": resolve_strategy(strategy, None if c["kind"] == "mlp" else batch),
      "remat": remat, "conv_impl": metajax.models.resolve_conv_impl(conv_impl) if c["kind"] == "conv" else None,
      "downsample": downsample if c["kind"] == "conv" else None,
      "compile_s": round(compile_s, 2), "step_s_median": times[len(times) // 2], "step_s_min": times[0],
      "steps_per_s": 1.0 / times[len(times) // 2],
      "xla_flops_per_step": flops,
      "xla_temp_mb": round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 1) if mem else None,
      "peak_rss_mb": peak_rss_mb,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
  parser.add_argument("--strategies", nargs="+", default=["map", "vmap"], choices=["auto", "map", "vmap", "unroll"])
  parser.add_argument("--conv-impl", default="auto", choices=["auto", "vjp", "matmul", "xla"])
  parser.add_argument("--downsample", default="max_pool", choices=["max_pool", "stride"], help="Conv4's halving")
  parser.add_argument("--remat", action="store_true", help="also measure remat=True")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="maml_speed")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement, print JSON
  ns = parser.parse_args()
  if ns.one:
    print(json.dumps(measure(**json.loads(ns.one))))
    return
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
  from _common import machine, save
  rows = []
  for name in ns.configs:
    for order in ns.orders:
      for strategy in ns.strategies:
        for remat in ([False, True] if ns.remat else [False]):
          spec = dict(name=name, order=order, strategy=strategy, remat=remat, conv_impl=ns.conv_impl,
                      downsample=ns.downsample,
                      repeats=ns.repeats if name != "sinusoid" else 5)
          proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                capture_output=True, text=True)
          if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
          row = json.loads(proc.stdout.strip().splitlines()[-1])
          rows.append(row)
          print(f"{name:10s} {order:6s} {strategy:6s} remat={remat!s:5s} compile {row['compile_s']:6.1f} s  "
                f"step {row['step_s_median'] * 1e3:9.2f} ms  peak RSS {row['peak_rss_mb']:7.0f} MB  "
                f"XLA temp {row['xla_temp_mb']} MB", flush=True)
  print("saved", save(ns.out, {"machine": machine(), "results": rows}))


if __name__ == "__main__":
  main()
