"""Probe: is the FOMAML 20w1s gap between the stride-2 and max-pool networks one of the
differences from Finn et al.'s network that the MAML protocol lists? The table's FOMAML cell
(protocol, seeds, the 100 curve tasks; 20w1s and 1,000 steps unless told), with one change to
the network:

  invert  images inverted, strokes 1 on 0 (their data generator's ``1.0 - image``)
  head    head kernel from a standard normal (their ``tf.random_normal``)
  bn      BatchNorm without a scale, its shift meta-learned but not adapted in the inner loop
  all     the three together
  xavier  conv kernels Glorot-uniform (their ``xavier_initializer_conv2d``; here LeCun normal,
          the same variance except the first layer's, 5.7x larger in standard deviation)

  python benchmarks/probes/omniglot_fomaml_network.py invert [--ways 5 --shots 1 --steps 5000]
      [--inner-lr 2.0] [--algo maml] [--out-dir /root/metajax-runs/ablate]

``--inner-lr`` replaces the protocol's inner learning rate (their code's step on the mean loss is
``ways`` times its ``update_lr``: RESULTS.md). ``--algo maml`` probes the second-order cell instead.

Swaps the registry's backbone and the learner's build in this process only; writes
``<out-dir>/<algo>_<W>w<S>s_<variant>.json`` with the curve. RESULTS.md has the findings."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import flax.linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import omniglot_table as T  # noqa: E402
from _common import DEFAULT_DATA, machine, train_with_curve  # noqa: E402

from metajax.harness.problem import build  # noqa: E402
from metajax.learners import gradient, registry  # noqa: E402
from metajax.models.conv4 import Conv4  # noqa: E402
from metajax.models.layers import Conv  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("variant", choices=("invert", "head", "bn", "all", "xavier"))
parser.add_argument("--ways", type=int, default=20)
parser.add_argument("--shots", type=int, default=1)
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--curve-every", type=int, default=250)
parser.add_argument("--algo", choices=("fomaml", "maml"), default="fomaml")
parser.add_argument("--inner-lr", type=float, help="the inner learning rate (default: the protocol's)")
parser.add_argument("--out-dir", default="/root/metajax-runs/ablate")
parser.add_argument("--data-dir", default=os.environ.get("METAJAX_DATA", str(DEFAULT_DATA)))
cli = parser.parse_args()
head_normal = cli.variant in ("head", "all")
bn_shift = cli.variant in ("bn", "all")
invert = cli.variant in ("invert", "all")
conv_init = nn.initializers.xavier_uniform() if cli.variant == "xavier" else nn.initializers.lecun_normal()


class Net(Conv4):
  """The protocol's network (stride-2 blocks, averaged features, batch-statistics BatchNorm) with
  the variant's change; for this MAML-family cell only (no features-only or running-statistics use)."""

  @nn.compact
  def __call__(self, x, use_running_average=False):
    if invert:  # strokes 1 on 0, as Finn et al.'s data generator (1.0 - image)
      x = 1.0 - x
    for i in range(4):
      x = Conv(self.width, impl=self.conv_impl, use_bias=False, stride=2, kernel_init=conv_init, name=f"conv_{i}")(x)
      x = nn.BatchNorm(momentum=0.0, use_scale=not bn_shift, name=f"norm_{i}")(x, use_running_average=False)
      x = nn.relu(x)
    x = x.mean(axis=(1, 2))
    init = nn.initializers.normal(1.0) if head_normal else nn.initializers.lecun_normal()
    return nn.Dense(self.num_classes, kernel_init=init, name="head")(x)


registry.Setup.backbone = lambda self, head=True: Net(num_classes=self.ways, width=self.width)  # this process only
if bn_shift:
  entry = registry.REGISTRY[cli.algo]
  registry.REGISTRY[cli.algo] = entry._replace(build=registry._gradient(
      functools.partial(getattr(gradient, cli.algo), adapt_filter=lambda p: not gradient.is_batch_norm(p))))
ns = argparse.Namespace(algo=cli.algo, ways=cli.ways, shots=cli.shots, split="vinyals", test_tasks=600, eval_chunk=20,
                        runs_dir=cli.out_dir, data_dir=cli.data_dir, seed=0)
settings, _ = T.protocol(cli.algo, cli.ways, cli.shots)
settings["steps"] = cli.steps
out = f"{cli.out_dir}/{cli.algo}_{cli.ways}w{cli.shots}s_{cli.variant}"
if cli.inner_lr is not None:
  settings["inner_lr"] = cli.inner_lr
  out += f"_lr{cli.inner_lr:g}"
args = T._cell_args(ns, settings, chunk=cli.curve_every, out_dir=out, resume=False)
problem = build(args)
state, steps, t, curve = train_with_curve(args, problem, curve_tasks=100, eval_chunk=20, label=cli.variant)
Path(out + ".json").write_text(json.dumps(
    {"algo": cli.algo, "variant": cli.variant, "inner_lr": settings["inner_lr"], "curve": curve, "train_s": t, "machine": machine()}, indent=1))
