"""Where one MAML meta-step spends its time: a jax.profiler trace of the compiled step, with
every XLA op's time attributed (through its HLO metadata) to a part of the model.

Categories: conv compute (XLA convolutions and matrix products inside a conv layer), im2col
copies (the pads, slices, concatenations and transposes of a conv layer), BatchNorm, ReLU +
max-pool, head, outer step (the optimizer and everything outside the task loop), other;
each split into forward and backward (ops under a ``transpose(...)`` of autodiff).

  python benchmarks/profile_step.py --config omniglot --order second
  python benchmarks/profile_step.py --config mini --conv-impl matmul --out profile_mini_matmul

Writes results/<out>.json (default profile_<config>_<order>_<conv impl>) and prints a table.
Op times are summed over XLA:CPU's worker threads, so their total can exceed the wall time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, save  # noqa: E402
from maml_speed import CONFIGS, conv_problem  # noqa: E402

_COMPUTE = {"conv_general_dilated", "dot_general"}


def op_metadata(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its ``op_name`` metadata (the JAX name stack and primitive)."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
    if match:
      names[match.group(1)] = match.group(2)
  return names


def category(op_name: str) -> str:
  """The model part of one op, from its name stack, e.g. ``.../transpose(jvp(Conv4))/conv_1/pad``."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  if "while/body" not in op_name:
    return "outer step (optimizer, task loop)"
  primitive = op_name.rsplit("/", 1)[-1]
  if re.search(r"/conv_\d+/|/Conv_\d+/|/shortcut/", op_name):
    part = "conv compute" if primitive in _COMPUTE else "im2col copies"
  elif re.search(r"/norm_\d+/|BatchNorm", op_name):
    part = "BatchNorm"
  elif "/head/" in op_name:
    part = "head"
  elif "max_pool" in op_name or primitive in {"max", "select_n", "ge", "stack", "relu", "reduce_max"}:
    part = "ReLU + max-pool"
  else:
    part = "other"
  return f"{part} {direction}"


def profile(config: str, order: str, conv_impl: str, strategy: str, repeats: int) -> dict:
  import jax
  import optax
  from jax.profiler import ProfileData

  import metajax
  from metajax import maml
  from metajax.core import losses

  c = CONFIGS[config]
  if c["kind"] != "conv":
    raise SystemExit("profile_step: only the conv configs (omniglot, mini) are profiled")
  key = jax.random.PRNGKey(0)
  batch, params, apply_fn = conv_problem(c, conv_impl, key)
  config_ = maml.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, optimizer=optax.adam(1e-3),
                            inner_lr=c["inner_lr"], inner_steps=c["inner_steps"], first_order=order == "first",
                            task_strategy=strategy)
  state = maml.init(config_, params, key)
  step = jax.jit(lambda s, b: maml.meta_step(s, b, config=config_)).lower(state, batch).compile()
  names = op_metadata(step.as_text())
  out = step(state, batch)
  jax.block_until_ready(out)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(repeats):
      out = step(out[0], batch)
      jax.block_until_ready(out)
    jax.profiler.stop_trace()
    data = ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    seconds = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if not line.name.startswith("tf_XLAEigen"):
          continue
        for event in line.events:
          if event.name in names:
            seconds[category(names[event.name])] += event.duration_ns / 1e9 / repeats
  total = sum(seconds.values())
  return {"config": config, "order": order, "conv_impl": metajax.models.resolve_conv_impl(conv_impl),
          "strategy": strategy,
          "op_seconds_per_step": dict(seconds.most_common()), "op_seconds_total": total}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="omniglot", choices=["omniglot", "mini"])
  parser.add_argument("--order", default="second", choices=["second", "first"])
  parser.add_argument("--conv-impl", default="auto", choices=["auto", "vjp", "matmul", "xla"])
  parser.add_argument("--strategy", default="auto", choices=["auto", "map", "vmap", "unroll"])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out")
  ns = parser.parse_args()
  result = profile(ns.config, ns.order, ns.conv_impl, ns.strategy, ns.repeats)
  total = result["op_seconds_total"]
  for name, s in result["op_seconds_per_step"].items():
    print(f"{name:38s} {s:7.3f} s  {100 * s / total:5.1f} %")
  print(f"{'total op time':38s} {total:7.3f} s")
  out = ns.out or f"profile_{ns.config}_{ns.order}_{result['conv_impl']}"
  print("saved", save(out, {"machine": machine(), "args": vars(ns), **result}))


if __name__ == "__main__":
  main()
