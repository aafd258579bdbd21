"""PyTorch peers of metajax's MAML meta-step, on the configs of benchmarks/maml_speed.py:
learn2learn 0.2.0's ``MAML`` wrapper and ``torch.func`` (functional_call + grad + vmap over tasks).

Second or first order, seconds per meta-step (median of --repeats after a warm-up step).
Install the optional extra and learn2learn's source (its 0.2.0 wheel does not build on
Python 3.11; only its MAML module and utils are loaded, not its data package):

  pip install -e ".[peers]"                     # torch==2.13.0 (CPU build)
  pip download learn2learn==0.2.0 --no-deps --no-binary :all: --no-build-isolation -d /tmp/l2l
  tar xzf /tmp/l2l/learn2learn-0.2.0.tar.gz -C /tmp/l2l
  python benchmarks/peers/torch_maml.py --l2l-src /tmp/l2l/learn2learn-0.2.0 --configs omniglot mini

Prints one JSON line per measurement (benchmarks/second_vs_first_order.py runs it beside metajax).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maml_speed import CONFIGS  # noqa: E402


def load_l2l_maml(src: str) -> type:
  """learn2learn's ``MAML`` class from a source tree, without importing its package ``__init__``."""
  root = Path(src) / "learn2learn"
  if not (root / "algorithms" / "maml.py").is_file():
    raise FileNotFoundError(f"{root}/algorithms/maml.py not found; pass --l2l-src <learn2learn source dir>")
  for name, path in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
  for name, path in (("learn2learn.utils", root / "utils" / "__init__.py"),
                     ("learn2learn.algorithms.base_learner", root / "algorithms" / "base_learner.py"),
                     ("learn2learn.algorithms.maml", root / "algorithms" / "maml.py")):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules["learn2learn.algorithms.maml"].MAML


def conv4(ways: int, channels: int, width: int, hw: int) -> nn.Module:
  """Conv4 as in metajax: 3×3 conv (no bias) → batch-stat BN → ReLU → 2×2 max-pool, ×4; linear head."""
  layers, c = [], channels
  for _ in range(4):
    layers += [nn.Conv2d(c, width, 3, padding=1, bias=False),
               nn.BatchNorm2d(width, momentum=1.0, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
    c = width
  side = hw
  for _ in range(4):
    side //= 2
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, ways))


def mlp() -> nn.Module:
  return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def make_problem(c: dict):
  """Model, loss and a random task batch ``(xs, ys, xq, yq)`` with a leading task axis."""
  mb = c["meta_batch"]
  if c["kind"] == "mlp":
    xs, xq = torch.rand(mb, c["shots"], 1) * 10 - 5, torch.rand(mb, c["queries"], 1) * 10 - 5
    return mlp(), F.mse_loss, (xs, torch.sin(xs), xq, torch.sin(xq))
  ways, hw, ch = c["ways"], c["hw"], c["channels"]
  xs = torch.randn(mb, ways * c["shots"], ch, hw, hw)
  xq = torch.randn(mb, ways * c["queries"], ch, hw, hw)
  ys = torch.arange(ways).repeat_interleave(c["shots"]).expand(mb, -1)
  yq = torch.arange(ways).repeat_interleave(c["queries"]).expand(mb, -1)
  return conv4(ways, ch, c["width"], hw), F.cross_entropy, (xs, ys, xq, yq)


def l2l_step(maml, opt, loss_fn, batch, steps: int) -> None:
  """learn2learn's documented loop: clone, adapt, accumulate query-loss gradients, step."""
  opt.zero_grad()
  xs, ys, xq, yq = batch
  for t in range(xs.shape[0]):
    learner = maml.clone()
    for _ in range(steps):
      learner.adapt(loss_fn(learner(xs[t]), ys[t]))
    (loss_fn(learner(xq[t]), yq[t]) / xs.shape[0]).backward()
  opt.step()


def func_step(model, params: dict, opt, loss_fn, batch, steps: int, lr: float, first_order: bool) -> None:
  """torch.func: per-task inner loop by ``grad`` (create_graph implied), ``vmap`` over tasks."""

  def task_loss(p, xs, ys, xq, yq):
    for _ in range(steps):
      g = grad(lambda q: loss_fn(functional_call(model, q, (xs,)), ys))(p)
      if first_order:
        g = {k: v.detach() for k, v in g.items()}
      p = {k: p[k] - lr * g[k] for k in p}
    return loss_fn(functional_call(model, p, (xq,)), yq)

  opt.zero_grad()
  losses = vmap(task_loss, in_dims=(None, 0, 0, 0, 0), randomness="same")(params, *batch)
  losses.mean().backward()
  opt.step()


def measure(name: str, peer: str, order: str, repeats: int, l2l_src: str | None) -> dict:
  torch.manual_seed(0)
  c = CONFIGS[name]
  model, loss_fn, batch = make_problem(c)
  first_order = order == "first"
  if peer == "learn2learn":
    maml = load_l2l_maml(l2l_src)(model, lr=c["inner_lr"], first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    step = lambda: l2l_step(maml, opt, loss_fn, batch, c["inner_steps"])
  else:
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), 1e-3)
    step = lambda: func_step(model, params, opt, loss_fn, batch, c["inner_steps"], c["inner_lr"], first_order)
  step()  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  times.sort()
  return {"config": name, "peer": peer, "order": order, "step_s_median": times[len(times) // 2],
          "step_s_min": times[0], "threads": torch.get_num_threads(), "torch": torch.__version__,
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--peers", nargs="+", default=["learn2learn", "torch.func"], choices=["learn2learn", "torch.func"])
  parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--l2l-src", help="learn2learn 0.2.0 source directory (holding learn2learn/)")
  ns = parser.parse_args()
  for name in ns.configs:
    for peer in ns.peers:
      for order in ns.orders:
        repeats = ns.repeats if name != "sinusoid" else 20
        print(json.dumps(measure(name, peer, order, repeats, ns.l2l_src)), flush=True)


if __name__ == "__main__":
  main()
