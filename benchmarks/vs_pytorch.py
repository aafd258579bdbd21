"""metajax against learn2learn (and optionally torch.func), side by side in one invocation.

For every config of benchmarks/maml_speed.py (sinusoid, Omniglot-shaped, mini-ImageNet-shaped)
and both orders, the metajax meta-step (CPU defaults: conv_impl="auto", task_strategy="auto")
and the PyTorch peers run one after the other, each in its own subprocess, so every peak RSS
is its own and nothing else runs beside a measurement. Writes results/vs_pytorch.json: per
config and order the medians, metajax / peer ratios, metajax compile time and both peak RSS,
plus the machine, versions and git commit.

  pip install -e ".[peers]"
  pip download learn2learn==0.2.0 --no-deps --no-binary :all: --no-build-isolation -d /tmp/l2l
  tar xzf /tmp/l2l/learn2learn-0.2.0.tar.gz -C /tmp/l2l
  python benchmarks/vs_pytorch.py --l2l-src /tmp/l2l/learn2learn-0.2.0
  python benchmarks/vs_pytorch.py --l2l-src ... --configs omniglot --repeats 5 --peers learn2learn torch.func
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, run_json_lines, save  # noqa: E402
from maml_speed import CONFIGS  # noqa: E402


def _one_json(cmd: list[str]) -> dict | None:
  rows = run_json_lines(cmd)
  return rows[-1] if rows else None


def metajax_row(config: str, order: str, repeats: int) -> dict | None:
  spec = dict(name=config, order=order, strategy="auto", remat=False, conv_impl="auto", repeats=repeats)
  return _one_json([sys.executable, str(HERE / "maml_speed.py"), "--one", json.dumps(spec)])


def peer_row(config: str, peer: str, order: str, repeats: int, l2l_src: str | None) -> dict | None:
  cmd = [sys.executable, str(HERE / "peers" / "torch_maml.py"), "--configs", config, "--peers", peer,
         "--orders", order, "--repeats", str(repeats)]
  return _one_json(cmd + (["--l2l-src", l2l_src] if l2l_src else []))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
  parser.add_argument("--peers", nargs="+", default=["learn2learn"], choices=["learn2learn", "torch.func"])
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per conv measurement (median)")
  parser.add_argument("--l2l-src", help="learn2learn 0.2.0 source directory (holding learn2learn/)")
  parser.add_argument("--out", default="vs_pytorch")
  ns = parser.parse_args()
  if "learn2learn" in ns.peers and not (ns.l2l_src and (Path(ns.l2l_src) / "learn2learn").is_dir()):
    parser.error(f"--l2l-src {ns.l2l_src!r} is not a learn2learn source directory (see --help)")
  rows = []
  for config in ns.configs:
    for order in ns.orders:
      ours = metajax_row(config, order, ns.repeats)
      if ours is None:
        continue
      row = {"config": config, "order": order, "metajax_step_s": ours["step_s_median"],
             "metajax_compile_s": ours["compile_s"], "metajax_peak_rss_mb": ours["peak_rss_mb"],
             "metajax_xla_temp_mb": ours["xla_temp_mb"], "metajax_strategy": ours["strategy"],
             "metajax_conv_impl": ours["conv_impl"]}
      line = f"{config:8s} {order:6s} metajax {ours['step_s_median'] * 1e3:9.2f} ms (compile {ours['compile_s']:.1f} s, RSS {ours['peak_rss_mb']:.0f} MB)"
      for peer in ns.peers:
        theirs = peer_row(config, peer, order, ns.repeats, ns.l2l_src)
        if theirs is None:
          continue
        row[f"{peer}_step_s"] = theirs["step_s_median"]
        row[f"{peer}_peak_rss_mb"] = theirs["peak_rss_mb"]
        row[f"ratio_to_{peer}"] = ours["step_s_median"] / theirs["step_s_median"]
        row[f"rss_ratio_to_{peer}"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        row["torch"] = theirs["torch"]
        line += (f" | {peer} {theirs['step_s_median'] * 1e3:9.2f} ms (RSS {theirs['peak_rss_mb']:.0f} MB)"
                 f" ratio {row[f'ratio_to_{peer}']:.2f}×")
      rows.append(row)
      print(line, flush=True)
  for config in ns.configs:
    by_order = {r["order"]: r for r in rows if r["config"] == config}
    if {"first", "second"} <= by_order.keys():
      ratio = by_order["first"]["metajax_step_s"] / by_order["second"]["metajax_step_s"]
      print(f"{config:8s} metajax first / second order: {ratio:.2f}", flush=True)
  print("saved", save(ns.out, {"machine": machine(), "args": vars(ns), "results": rows}))


if __name__ == "__main__":
  main()
