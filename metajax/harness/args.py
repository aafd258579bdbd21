"""What ``metajax train`` runs: its settings, their per-dataset defaults and their checks."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional, get_args, get_origin, get_type_hints

from metajax.core.meta import TaskStrategy
from metajax.core.validate import check_finite_number, check_nonnegative_int, check_positive_int
from metajax.data.images import Resample
from metajax.learners import registry
from metajax.learners.gradient import CarryMode, check_carry_mode
from metajax.models.conv4 import ConvInit, Downsample, VectorFeatures

Dataset = Literal["sinusoid", "omniglot", "mini-imagenet", "cifar-fs", "fc100", "tiered-imagenet", "cub"]
InnerOptimizer = Literal["sgd", "adam"]
OuterOptimizer = Literal["adam", "sgd"]
LRDecay = Literal["cosine", "linear", "halve"]
ClipScope = Literal["all", "network"]

# Per-dataset defaults for options left unset: the MAML paper's settings, with steps cut so that a
# default image run takes about 10 minutes on 2 CPU cores (MAML: ~2 s per Omniglot step).
DATASET_DEFAULTS = {
    "sinusoid": dict(steps=70_000, meta_batch=25, shots=10, queries=10, inner_lr=0.01,
                     eval_tasks=1000, eval_queries=100, chunk=1000, width=64, train_split="trainval",
                     eval_split="test"),
    "omniglot": dict(steps=300, meta_batch=32, shots=1, queries=15, inner_lr=0.4,
                     eval_tasks=600, eval_queries=15, chunk=10, width=64, train_split="trainval",
                     eval_split="test"),
    "mini-imagenet": dict(steps=300, meta_batch=4, shots=1, queries=15, inner_lr=0.01,
                          eval_tasks=600, eval_queries=15, chunk=10, width=32, train_split="train",
                          eval_split="test"),
}
# The other 84×84 sets take mini-ImageNet's settings (Conv4 width 32, as MAML there). The 32×32 CIFAR
# sets take width 64, as the Conv4 baselines of Bertinetto et al. (2019) and Oreshkin et al. (2018), and
# twice the steps: at 32×32 a width-64 MAML step costs 0.4 of a mini-ImageNet one (measured on 2 CPU cores).
_MINI = DATASET_DEFAULTS["mini-imagenet"]
DATASET_DEFAULTS |= {name: {**_MINI, "width": 64, "steps": 600} for name in ("cifar-fs", "fc100")}
DATASET_DEFAULTS |= {name: dict(_MINI) for name in ("tiered-imagenet", "cub")}

# Per-algorithm defaults on image datasets, ahead of DATASET_DEFAULTS: each paper's training
# episodes (Snell et al. 2017: one 60-way episode of 5 queries per class on Omniglot, 30-way
# of 15 on mini-ImageNet; Sung et al. 2018: one episode per step), with more of these cheaper steps.
ALGO_DEFAULTS = {
    ("protonet", "omniglot"): dict(meta_batch=1, train_ways=60, queries=5, steps=2000),
    ("protonet", "mini-imagenet"): dict(meta_batch=1, train_ways=30, queries=15, steps=2000),
    ("relation", "omniglot"): dict(meta_batch=1, queries=19, steps=3000),
    ("relation", "mini-imagenet"): dict(meta_batch=1, queries=15, steps=2000),
}
# The other natural-image sets take mini-ImageNet's episodes, as their DATASET_DEFAULTS do.
ALGO_DEFAULTS |= {(algo, name): dict(ALGO_DEFAULTS[algo, "mini-imagenet"]) for algo in ("protonet", "relation")
                  for name in ("cifar-fs", "fc100", "tiered-imagenet", "cub")}


@dataclasses.dataclass(frozen=True)
class TrainArgs:
  """What ``metajax train`` runs. ``None`` fields take ``ALGO_DEFAULTS``, then
  ``DATASET_DEFAULTS``; ``train_ways`` and ``train_shots`` default to ``ways`` and ``shots``."""

  dataset: Dataset = "sinusoid"
  data_dir: Optional[str] = None
  algo: str = "maml"
  steps: Optional[int] = None
  meta_batch: Optional[int] = None
  ways: int = 5
  train_ways: Optional[int] = None
  shots: Optional[int] = None
  train_shots: Optional[int] = None
  queries: Optional[int] = None
  inner_steps: int = 1
  inner_lr: Optional[float] = None
  inner_optimizer: InnerOptimizer = "sgd"
  inner_batch: Optional[int] = None
  eval_inner_batch: Optional[int] = None
  carry_inner_state: bool = False
  carry_mode: CarryMode = "mean"
  outer_optimizer: OuterOptimizer = "adam"
  outer_lr: float = 1e-3
  outer_lr_decay_steps: int = 0
  outer_lr_decay: LRDecay = "cosine"
  clip_grad_norm: Optional[float] = None
  clip_scope: ClipScope = "all"
  width: Optional[int] = None
  downsample: Downsample = "max_pool"
  conv_features: VectorFeatures = "flatten"
  conv_init: ConvInit = "lecun"
  unpadded_blocks: int = 0
  eval_tasks: Optional[int] = None
  eval_queries: Optional[int] = None
  eval_inner_steps: Optional[int] = None
  train_split: Optional[str] = None
  eval_split: Optional[str] = None
  resample: Resample = "lanczos"
  invert: bool = False
  seed: int = 0
  chunk: Optional[int] = None
  task_strategy: TaskStrategy = "auto"
  devices: str = "1"
  out_dir: Optional[str] = None
  resume: bool = False
  val_every: int = 0
  val_tasks: int = 100
  checkpoint_every: int = 1
  keep_checkpoints: int = 3

  def __post_init__(self):
    for name in SWITCHES:
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"--{name.replace('_', '-')} is a switch: true or false, got {getattr(self, name)!r}")
    for name, choices in CHOICES.items():
      if getattr(self, name) not in choices:
        raise ValueError(f"--{name.replace('_', '-')}: unknown value {getattr(self, name)!r}; choose one of {choices}")
    if self.resample != "lanczos" and self.dataset != "omniglot":
      raise ValueError(f"--resample {self.resample}: only Omniglot's images are resized by this option")
    if self.invert and self.dataset != "omniglot":
      raise ValueError("--invert: only Omniglot's black-on-white drawings are inverted by this option")
    if self.conv_init != "lecun" and self.dataset == "sinusoid":
      raise ValueError(f"--conv-init {self.conv_init}: starts Conv4's blocks; sinusoid tasks use the MLP")
    if self.unpadded_blocks and self.dataset == "sinusoid":
      raise ValueError(f"--unpadded-blocks {self.unpadded_blocks}: sets Conv4's blocks; sinusoid tasks use the MLP")
    if type(self.unpadded_blocks) is not int or self.unpadded_blocks not in range(5):
      raise ValueError(f"--unpadded-blocks must be 0 to 4 (of Conv4's blocks), got {self.unpadded_blocks!r}")
    if self.unpadded_blocks and self.downsample == "stride":
      raise ValueError("--unpadded-blocks needs --downsample max_pool (unpadded convolutions take stride 1)")
    entry = registry.get(self.algo)
    if entry.classification_only and self.dataset == "sinusoid":
      raise ValueError(f"{self.algo} is a classifier; use it with --dataset omniglot")
    if self.eval_inner_steps is not None and not entry.eval_inner_steps:
      raise ValueError(f"--eval-inner-steps: {self.algo} evaluates without a configurable number of inner steps")
    why = registry.ignored_options(self.algo, [flag for flag, given in (
        ("--inner-optimizer", self.inner_optimizer != "sgd"), ("--inner-batch", self.inner_batch is not None),
        ("--eval-inner-batch", self.eval_inner_batch is not None)) if given],
        carry="--carry-inner-state" if self.carry_inner_state else None,
        features=f"--conv-features {self.conv_features}" if self.conv_features != "flatten" else None)
    if why:
      raise ValueError(why)
    defaults = {**DATASET_DEFAULTS[self.dataset], **ALGO_DEFAULTS.get((self.algo, self.dataset), {})}
    for name, value in defaults.items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    if self.train_ways is None:
      object.__setattr__(self, "train_ways", self.ways)
    if self.train_shots is None:
      object.__setattr__(self, "train_shots", self.shots)
    if self.train_ways != self.ways and not entry.ways_free:
      raise ValueError(f"--train-ways {self.train_ways} differs from --ways {self.ways}, but {self.algo}'s "
                       f"parameters depend on the number of classes; only "
                       f"{registry.names_with('ways_free')} train with other ways")
    for name in ("steps", "meta_batch", "ways", "train_ways", "shots", "train_shots", "queries", "inner_steps", "eval_tasks",
                 "eval_queries", "chunk", "width", "checkpoint_every", "keep_checkpoints", "val_tasks") + \
        tuple(n for n in ("eval_inner_steps", "inner_batch", "eval_inner_batch") if getattr(self, n) is not None):
      check_positive_int(getattr(self, name), f"--{name.replace('_', '-')}")
    if self.carry_inner_state and self.inner_optimizer == "sgd":
      raise ValueError("--carry-inner-state carries the inner Adam's state across tasks: it needs "
                       "--inner-optimizer adam")
    check_carry_mode(self.carry_mode, self.carry_inner_state, "", names=("--carry-mode", "--carry-inner-state"))
    classes = lambda ways: 1 if self.dataset == "sinusoid" else ways
    for name, support in (("inner_batch", self.train_shots * classes(self.train_ways)),
                          ("eval_inner_batch", self.shots * classes(self.ways))):
      if getattr(self, name) is not None and getattr(self, name) > support:
        raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} exceeds the {support} support examples "
                         f"of a{' training' if name == 'inner_batch' else 'n evaluation'} task")
    check_nonnegative_int(self.val_every, "--val-every")
    check_nonnegative_int(self.outer_lr_decay_steps, "--outer-lr-decay-steps")
    if self.devices != "all" and not (self.devices.isdigit() and int(self.devices) >= 1):
      raise ValueError(f"--devices must be 'all' or a positive integer, got {self.devices!r}")
    if self.resume and not self.out_dir:
      raise ValueError("--resume needs the --out-dir of the run to continue")
    for name in ("inner_lr", "outer_lr") + (("clip_grad_norm",) if self.clip_grad_norm is not None else ()):
      check_finite_number(getattr(self, name), f"--{name.replace('_', '-')}", positive=True)
    if self.clip_scope == "network" and self.clip_grad_norm is None:
      raise ValueError("--clip-scope network says how --clip-grad-norm clips: give --clip-grad-norm too")
    if self.clip_scope == "network" and not entry.networks:
      raise ValueError(f"--clip-scope network clips each of a learner's networks apart; {self.algo} has one "
                       f"(learners with several: {registry.names_with('networks')})")


# The on/off options (the CLI's store_true flags).
SWITCHES = tuple(name for name, hint in get_type_hints(TrainArgs).items() if hint is bool)
# The string options and their choices, from their ``Literal`` types (the CLI's ``choices``).
CHOICES: dict[str, tuple[str, ...]] = {name: get_args(hint) for name, hint in get_type_hints(TrainArgs).items()
                                       if get_origin(hint) is Literal}


def check_splits_exist(dataset: str, **splits: Optional[str]) -> None:
  """Raises ``ValueError`` when a split option (``train_split=``, ``eval_split=``) is given for the
  sinusoid's generated tasks, which have none (it would be ignored)."""
  given = [f"--{name.replace('_', '-')} {value!r}" for name, value in splits.items() if value is not None]
  if dataset == "sinusoid" and given:
    raise ValueError(f"{', '.join(given)}: sinusoid tasks are generated, they have no splits")


# Options added after run directories were first saved, with the value a run.json that lacks one had.
# Checkpoint fingerprints leave them out at those values, so older runs still resume.
LATER_OPTIONS = {"conv_features": "flatten", "carry_mode": "mean", "resample": "lanczos", "conv_init": "lecun",
                 "invert": False, "unpadded_blocks": 0, "clip_scope": "all"}
# Options that may differ between a run and its resumption (everything else must match).
RESUMABLE_CHANGES = ("steps", "resume", "devices", "eval_tasks", "eval_queries", "eval_inner_steps", "out_dir",
                     "data_dir", "checkpoint_every", "keep_checkpoints", "val_every", "val_tasks")
