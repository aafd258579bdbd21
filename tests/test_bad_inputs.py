"""A catalogue of bad inputs: each gives a clear error naming the problem; CLI errors
exit non-zero without a traceback; nothing already saved is lost."""
from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

import metajax
from metajax import learners, maml
from metajax.harness import checkpoint
from metajax.harness.args import CHOICES, DATASET_DEFAULTS, TrainArgs
from metajax.harness.cli import main
from metajax.harness.run import load_run
from metajax.core import adapt, mean_and_ci95
from metajax.data import cifar100, cub, episodes, mini_imagenet, omniglot, sinusoid, tiered_imagenet
from tests.conftest import tiny_mlp
from tests.test_data import SHARED, _tree, needs_shared


def _apply():
  return tiny_mlp(jax.random.PRNGKey(0))[1]


def _batch():
  return sinusoid.sample(jax.random.PRNGKey(0), 2, 3, 3)


def _step(config, batch):
  params, _ = tiny_mlp(jax.random.PRNGKey(0))
  return maml.meta_step(maml.init(config, params, jax.random.PRNGKey(0)), batch, config=config)


def _learner_state(learner):
  params, _ = tiny_mlp(jax.random.PRNGKey(0))
  return learner.init(jax.random.PRNGKey(0), params)


def _net():
  from metajax.learners import learned_opt
  return learned_opt.LSTMOptimizerNet(hidden=4)


API_CASES = [
    ("iMAML with no proximal term", lambda tmp: learners.imaml(_apply(), lam=0.0), ValueError,
     "IMAMLConfig: lam must be a positive finite number, got 0.0"),
    ("iMAML with zero CG steps", lambda tmp: learners.imaml(_apply(), cg_steps=0), ValueError,
     "IMAMLConfig: cg_steps must be a positive integer, got 0"),
    ("iMAML with an unknown HVP mode", lambda tmp: learners.imaml(_apply(), hvp="jacfwd"), ValueError,
     "IMAMLConfig: unknown hvp 'jacfwd'"),
    ("iMAML adapting only a head", lambda tmp: learners.imaml(_apply(), adapt_filter=lambda path: True), ValueError,
     "IMAMLConfig: adapt_filter is not supported"),
    ("MAML factory with zero inner steps", lambda tmp: learners.maml(_apply(), inner_steps=0), ValueError,
     "MAMLConfig: inner_steps must be a positive integer, got 0"),
    ("Reptile with a negative inner rate", lambda tmp: learners.reptile(_apply(), inner_lr=-1.0), ValueError,
     "ReptileConfig: inner_lr must be a finite number >= 0"),
    ("MSL annealing that is not an integer", lambda tmp: maml.MAMLConfig(_apply(), msl_anneal_steps=1.5), ValueError,
     "msl_anneal_steps must be a non-negative integer"),
    ("prototypical network with one way", lambda tmp: learners.prototypical(_apply(), ways=1), ValueError,
     "prototypical: ways must be an integer >= 2"),
    ("learned-optimizer truncation not dividing the horizon", lambda tmp: learners.learned_optimizer(
        _net(), _apply(), lambda k: None, horizon=10, truncation=3), ValueError, "truncation 3 must divide horizon 10"),
    ("gradient learner of a forward config", lambda tmp: learners.gradient.learner(
        learners.LearnerConfig(lambda p, t: t.x_query)), TypeError, "expected a MAMLConfig or ReptileConfig"),
    ("forward learner of a MAML config", lambda tmp: learners.forward.learner(maml.MAMLConfig(_apply())), TypeError,
     "expected a LearnerConfig"),
    ("unknown registry name", lambda tmp: learners.registry.get("maml3"), ValueError, "unknown algorithm 'maml3'"),
    ("registering a taken name", lambda tmp: learners.register("maml", None, inner_steps=True, eval_inner_steps=True),
     ValueError, "'maml' is already registered"),
    ("setup with a rank-2 input", lambda tmp: learners.Setup(x_shape=(28, 28)), ValueError, "x_shape must be"),
    ("inner batches for a metric learner", lambda tmp: learners.registry.get("protonet").build(
        learners.Setup(x_shape=(4,), ways=3, inner_batch_size=2), jax.random.PRNGKey(0)), ValueError,
     r"Setup: inner_batch_size set a gradient inner loop; protonet has none \(choose one of anil, fomaml, imaml, "
     r"maml, maml\+\+, meta-sgd, reptile\)"),
    ("an inner optimizer and a carried state for the black-box RNN", lambda tmp: learners.registry.get("rnn").build(
        learners.Setup(inner_optimizer=optax.adam(1e-3), carry_inner_state=True), jax.random.PRNGKey(0)),
     ValueError, "inner_optimizer set a gradient inner loop; rnn has none .*; carry_inner_state carries the inner "
     r"optimizer's state across tasks, which rnn does not \(learners that do: reptile\)"),
    ("setup with unknown conv features", lambda tmp: learners.Setup(conv_features="maps"), ValueError,
     r"Setup: unknown conv_features 'maps'; choose one of \('flatten', 'mean'\)"),
    ("averaged conv features for the relation network", lambda tmp: learners.registry.get("relation").build(
        learners.Setup(x_shape=(28, 28, 1), ways=5, conv_features="mean"), jax.random.PRNGKey(0)), ValueError,
     "Setup: conv_features 'mean' makes Conv4's feature maps vectors; relation compares the maps themselves"),
    ("a sequential carry without a carried state", lambda tmp: learners.Setup(carry_mode="sequential"),
     ValueError, "Setup: carry_mode 'sequential' says how tasks share a carried inner state; set "
                 "carry_inner_state=True"),
    ("an unknown registry flag", lambda tmp: learners.registry.names_with("ways_fre"), ValueError,
     "names_with: 'ways_fre' is not an Entry flag"),
    ("carried inner state for MAML", lambda tmp: learners.registry.get("maml").build(
        learners.Setup(inner_optimizer=optax.adam(1e-3), carry_inner_state=True), jax.random.PRNGKey(0)), ValueError,
     "Setup: carry_inner_state carries the inner optimizer's state across tasks, which maml does not"),
    ("optimizer state without an optimizer", lambda tmp: adapt(
        {"w": jnp.ones(2)}, None, lambda p, _: jnp.sum(p["w"]), steps=1, lr=0.1, opt_state=()), ValueError,
     "`opt_state` is the state of an `optimizer`"),
    ("zero evaluation inner steps", lambda tmp: (lambda l: l.evaluate(_learner_state(l), _batch(), inner_steps=0))(
        learners.maml(_apply())), ValueError, "inner_steps must be a positive integer, got 0"),
    ("inner steps for a learner without them", lambda tmp: (lambda l: l.evaluate(
        _learner_state(l), _batch(), inner_steps=3))(learners.black_box_rnn(lambda *a: a[-1])), ValueError,
     "black_box_rnn adapts without inner gradient steps"),
    ("apply_fn not callable", lambda tmp: maml.MAMLConfig(None), TypeError, "apply_fn must be callable"),
    ("optimizer not optax", lambda tmp: maml.MAMLConfig(_apply(), optimizer="adam"), TypeError,
     "optax.GradientTransformation"),
    ("negative inner lr", lambda tmp: maml.MAMLConfig(_apply(), inner_lr=-0.1), ValueError, "inner_lr"),
    ("zero inner batch", lambda tmp: maml.MAMLConfig(_apply(), inner_batch_size=0), ValueError,
     "MAMLConfig: inner_batch_size must be a positive integer, got 0"),
    ("inner batches larger than the support", lambda tmp: _step(maml.MAMLConfig(_apply(), inner_batch_size=4), _batch()),
     ValueError, "inner mini-batches of 4 exceed the 3 support examples"),
    ("inner batches of the wrong shape", lambda tmp: adapt({"w": jnp.zeros(2)}, jnp.zeros(4), lambda p, s: 0.0,
                                                       steps=3, lr=0.1, batches=jnp.zeros((2, 2), jnp.int32)),
     ValueError, r"adapt: `batches` must be \(steps=3, batch\) integer indices; got int32 \(2, 2\)"),
    ("Conv4 with an unknown downsampling", lambda tmp: metajax.models.Conv4(downsample="avg").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))), ValueError, "Conv4: unknown downsample 'avg'"),
    ("Conv4 with unknown features", lambda tmp: metajax.models.Conv4(features="sum").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))), ValueError, "Conv4: unknown features 'sum'"),
    ("a stride of zero", lambda tmp: metajax.models.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), 0),
     ValueError, "conv2d: stride must be a positive int, got 0"),
    ("negative MSL annealing", lambda tmp: maml.MAMLConfig(_apply(), msl_anneal_steps=-1), ValueError,
     "msl_anneal_steps"),
    ("lr tree of another structure", lambda tmp: adapt(
        {"w": jnp.ones(2)}, None, lambda p, _: jnp.sum(p["w"]), steps=1, lr={"v": 1.0}), ValueError, "`lr`"),
    ("tuple instead of Task", lambda tmp: _step(maml.MAMLConfig(_apply()), tuple(_batch())), TypeError,
     "expected a metajax Task"),
    ("ANIL head that does not exist", lambda tmp: _step(maml.MAMLConfig(_apply(), adapt_filter=lambda path: path.startswith("classifier")), _batch()),
     ValueError, "selects no parameter"),
    ("no tasks to sample", lambda tmp: sinusoid.sample(jax.random.PRNGKey(0), 0, 5, 5), ValueError,
     "num_tasks must be a positive int"),
    ("unknown conv implementation", lambda tmp: metajax.models.Conv(4, impl="fft").init(
        jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1))), ValueError, "unknown impl"),
    ("episode images of the wrong rank", lambda tmp: episodes.sample(
        jax.random.PRNGKey(0), jnp.zeros((5, 4, 4), jnp.uint8), num_tasks=1, ways=2, shots=1, queries=1),
     ValueError, "images must be"),
    ("confidence interval of nothing", lambda tmp: mean_and_ci95([]), ValueError, "no values"),
    ("rotation by 45 degrees", lambda tmp: omniglot.rotate(jnp.zeros((2, 3, 3)), 45), ValueError,
     "multiple of 90"),
]


def _no_split_files(tmp):
  _tree(tmp / "images_background")
  _tree(tmp / "images_evaluation")
  return omniglot.load("trainval", tmp, cache_dir=tmp / "c")


def _bad_split_line(tmp):
  _tree(tmp / "images_background")
  _tree(tmp / "images_evaluation")
  (tmp / "splits" / "vinyals").mkdir(parents=True)
  (tmp / "splits" / "vinyals" / "test.txt").write_text("Alpha0/character01/rot000\nKlingon/character07/rot090\n")
  return omniglot.load("test", tmp, cache_dir=tmp / "c")


def _flat_zip(tmp):
  with zipfile.ZipFile(tmp / "images_background.zip", "w") as z:
    z.writestr("a.png", b"x")
  return omniglot.load("background", tmp, cache_dir=tmp / "c")


def _cifar_pickles(tmp, meta):
  for name, content in (("meta", meta), ("train", {}), ("test", {})):
    (tmp / name).write_bytes(pickle.dumps(content))
  return cifar100.load("train", tmp, cache_dir=tmp / "c")


class _RunsACommand:
  def __reduce__(self):
    return os.system, ("echo unpickling ran a command",)


def _cifar_fs_split_file(tmp, text):
  (tmp / "data").mkdir()
  (tmp / "splits" / "bertinetto").mkdir(parents=True)
  (tmp / "splits" / "bertinetto" / "train.txt").write_text(text)
  return cifar100.load("train", tmp, cache_dir=tmp / "c")


def _cub_folders(tmp, *names, split_files=()):
  for name in names:
    (tmp / "images" / name).mkdir(parents=True)
  for split in split_files:
    (tmp / "splits").mkdir(exist_ok=True)
    (tmp / "splits" / f"{split}.txt").write_text(names[0] + "\n")
  return cub.load("train", tmp, cache_dir=tmp / "c")


def _tiered_csv(tmp, text):
  (tmp / "train.csv").write_text(text)
  return tiered_imagenet.load("train", tmp, cache_dir=tmp / "c")


LOADER_CASES = [
    ("split file missing", _no_split_files, FileNotFoundError, "split file"),
    ("split names an unknown character", _bad_split_line, ValueError, "Klingon/character07"),
    ("zip without the Omniglot layout", _flat_zip, ValueError, "expected the Omniglot layout"),
    ("mini-ImageNet folder empty", lambda tmp: mini_imagenet.load("train", tmp), FileNotFoundError,
     "neither"),
    ("CIFAR-FS folder empty", lambda tmp: cifar100.load("train", tmp), FileNotFoundError,
     "found none of .*train,test,meta"),
    ("CIFAR-100 pickle that runs a command", lambda tmp: _cifar_pickles(tmp, _RunsACommand()),
     cifar100.UnsafePickleError, r"meta: refusing to unpickle (posix|os|nt)\.system"),
    ("CIFAR-100 pickle without class names", lambda tmp: _cifar_pickles(tmp, {"label_names": []}), ValueError,
     "lacks the 'fine_label_names' entry"),
    ("CIFAR-FS split file with an unknown class", lambda tmp: _cifar_fs_split_file(tmp, "apple\nunicorn\n"),
     ValueError, r"train.txt: unknown class name\(s\) unicorn"),
    ("FC100 of an unknown split", lambda tmp: cifar100.load("novel", tmp, benchmark="fc100"), ValueError,
     "unknown FC100 split 'novel'"),
    ("tiered-ImageNet folder empty", lambda tmp: tiered_imagenet.load("train", tmp), FileNotFoundError,
     "neither .*train/ nor .*train.csv"),
    ("tiered-ImageNet CSV row without a category", lambda tmp: _tiered_csv(tmp, "n01440764\n"), ValueError,
     "line 1: expected 'synset,category'"),
    ("tiered-ImageNet CSV naming a missing synset", lambda tmp: _tiered_csv(tmp, "n01440764,n01473806\n"),
     FileNotFoundError, r"class folder\(s\) of tiered-ImageNet train missing: n01440764"),
    ("CUB folder without images/", lambda tmp: cub.load("train", tmp), FileNotFoundError, "images/ not found"),
    ("CUB class folder not numbered", lambda tmp: _cub_folders(tmp, "001.Albatross", "Sparrow"), ValueError,
     "Sparrow not named NNN.Name"),
    ("CUB with one split file of three", lambda tmp: _cub_folders(tmp, "001.Albatross", split_files=("train",)),
     FileNotFoundError, "but not val.txt, test.txt; give all three"),
    ("CUB empty class folder", lambda tmp: _cub_folders(tmp, "001.Albatross"), ValueError,
     "001.Albatross: class folder holds no image files"),
    ("ragged episodes longer than the smallest class", lambda tmp: episodes.sample(
        jax.random.PRNGKey(0), jnp.zeros((3, 5, 4, 4), jnp.uint8), num_tasks=1, ways=2, shots=2, queries=2,
        counts=jnp.asarray([5, 3, 5])), ValueError, r"shots \+ queries = 4 exceeds the 3 examples of the smallest"),
]


@pytest.mark.parametrize("name,call,exc,match", API_CASES + LOADER_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_python_api_and_loaders(name, call, exc, match, tmp_path):
  with pytest.raises(exc, match=match):
    call(tmp_path)


def _cli_error(argv, message, capsys):
  code = main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2, err
  assert message in err, err
  assert "Traceback" not in err
  line = next(x for x in err.splitlines() if ": error: " in x)
  if " (details in " in line:  # the run directory's log holds the traceback
    log = Path(line.rsplit(" (details in ", 1)[1].rstrip(")"))
    assert log.name == "errors.log" and "Traceback" in log.read_text().split("--- ")[-1]


CLI_CASES = [
    (["train", "--steps", "0"], "--steps must be a positive integer"),
    (["train", "--inner-lr", "nan"], "--inner-lr must be a positive finite number"),
    (["train", "--outer-lr", "-1"], "--outer-lr must be a positive finite number"),
    (["train", "--outer-lr", "-1e-3"], "--outer-lr must be a positive finite number, got -0.001"),
    (["train", "--inner-lr", "-2.5E+1"], "--inner-lr must be a positive finite number"),
    (["train", "--steps", "-3"], "--steps must be a positive integer"),
    (["train", "--shots", "-3"], "--shots must be a positive integer"),
    (["train", "--ways", "0"], "--ways must be a positive integer"),
    (["train", "--val-every", "-1"], "--val-every must be a non-negative integer"),
    (["train", "--clip-grad-norm", "0"], "--clip-grad-norm must be a positive finite number"),
    (["train", "--dataset", "omniglot", "--algo", "relation", "--clip-scope", "network"],
     "--clip-scope network says how --clip-grad-norm clips: give --clip-grad-norm too"),
    (["train", "--dataset", "omniglot", "--algo", "protonet", "--clip-grad-norm", "1", "--clip-scope", "network"],
     "--clip-scope network clips each of a learner's networks apart; protonet has one (learners with several: "
     "matching-fce, relation)"),
    (["train", "--resume"], "--resume needs the --out-dir"),
    (["train", "--algo", "protonet"], "protonet is a classifier; use it with --dataset omniglot"),
    (["train", "--dataset", "omniglot", "--data-dir", "/nonexistent/data"], "does not exist"),
    (["train", "--dataset", "tiered-imagenet", "--data-dir", "/nonexistent/data"], "does not exist"),
    (["train", "--dataset", "cifar100"], "invalid choice: 'cifar100'"),
    (["eval", "/nonexistent/run"], "does not exist"),
    (["train", "--algo", "rnn", "--eval-inner-steps", "3"], "rnn evaluates without a configurable number of inner steps"),
    (["train", "--algo", "maml3"], "invalid choice: 'maml3'"),
    (["train", "--dataset", "omniglot", "--train-ways", "10"],
     "--train-ways 10 differs from --ways 5, but maml's parameters depend on the number of classes; "
     "only matching, matching-fce, protonet, relation train with other ways"),
    (["train", "--dataset", "omniglot", "--algo", "protonet", "--train-ways", "0"],
     "--train-ways must be a positive integer"),
    (["train", "--downsample", "avg_pool"], "invalid choice: 'avg_pool'"),
    (["train", "--conv-features", "maps"], "invalid choice: 'maps'"),
    (["train", "--dataset", "omniglot", "--algo", "relation", "--conv-features", "mean"],
     "--conv-features mean makes Conv4's feature maps vectors; relation compares the maps themselves"),
    (["train", "--algo", "reptile", "--inner-optimizer", "adam", "--carry-mode", "sequential"],
     "--carry-mode 'sequential' says how tasks share a carried inner state; set --carry-inner-state"),
    (["train", "--carry-mode", "serial"], "invalid choice: 'serial'"),
    (["train", "--algo", "reptile", "--carry-inner-state"],
     "--carry-inner-state carries the inner Adam's state across tasks: it needs --inner-optimizer adam"),
    (["train", "--inner-optimizer", "adam", "--carry-inner-state"],
     "--carry-inner-state carries the inner optimizer's state across tasks, which maml does not (learners that "
     "do: reptile)"),
    (["train", "--inner-optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["train", "--inner-batch", "0"], "--inner-batch must be a positive integer"),
    (["train", "--dataset", "omniglot", "--algo", "protonet", "--inner-optimizer", "adam"],
     "--inner-optimizer set a gradient inner loop; protonet has none (choose one of anil, fomaml"),
    (["train", "--algo", "rnn", "--eval-inner-batch", "5"],
     "--eval-inner-batch set a gradient inner loop; rnn has none"),
    (["train", "--shots", "5", "--inner-batch", "6"], "--inner-batch 6 exceeds the 5 support examples of a training task"),
    (["train", "--dataset", "omniglot", "--ways", "20", "--eval-inner-batch", "21"],
     "--eval-inner-batch 21 exceeds the 20 support examples of an evaluation task"),
    (["train", "--resample", "bicubic"], "invalid choice: 'bicubic'"),
    (["train", "--dataset", "mini-imagenet", "--resample", "nearest"],
     "--resample nearest: only Omniglot's images are resized by this option"),
    (["train", "--dataset", "cub", "--invert"], "--invert: only Omniglot's black-on-white drawings are inverted"),
    (["train", "--conv-init", "torch"], "--conv-init torch: starts Conv4's blocks; sinusoid tasks use the MLP"),
    (["train", "--conv-init", "xavier"], "invalid choice: 'xavier'"),
    (["train", "--dataset", "omniglot", "--unpadded-blocks", "5"],
     "--unpadded-blocks must be 0 to 4 (of Conv4's blocks), got 5"),
    (["train", "--unpadded-blocks", "2"], "--unpadded-blocks 2: sets Conv4's blocks; sinusoid tasks use the MLP"),
    (["train", "--dataset", "omniglot", "--unpadded-blocks", "-1"], "--unpadded-blocks must be 0 to 4"),
    (["train", "--dataset", "omniglot", "--unpadded-blocks", "1", "--downsample", "stride"],
     "--unpadded-blocks needs --downsample max_pool"),
]


@pytest.mark.parametrize("argv,message", CLI_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_cli_options(argv, message, capsys):
  _cli_error(argv, message, capsys)


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_train_args_string_options(name):
  """Every ``Literal`` option of ``TrainArgs`` is checked, naming its flag and choices (the CLI's argparse
  catches them first; this is the path of code that builds ``TrainArgs`` itself)."""
  with pytest.raises(ValueError, match=f"--{name.replace('_', '-')}: unknown value 'bogus'; choose one of"):
    TrainArgs(**{name: "bogus"})


@pytest.mark.parametrize("name", ["carry_inner_state", "invert", "resume"])
def test_train_args_switches_take_only_booleans(name):
  """A switch set from text (``omniglot_table.py --set carry_inner_state=yes``) is refused, not read as true."""
  with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} is a switch: true or false, got 'yes'"):
    TrainArgs(**{name: "yes"})


def test_every_string_option_has_its_choices():
  assert sorted(CHOICES) == ["carry_mode", "clip_scope", "conv_features", "conv_init", "dataset", "downsample",
                             "inner_optimizer", "outer_lr_decay", "outer_optimizer", "resample", "task_strategy"]
  assert set(CHOICES["dataset"]) == set(DATASET_DEFAULTS)


@needs_shared
@pytest.mark.parametrize("extra,message", [
    (["--ways", "1000"], "ways=1000 exceeds the 544 classes"),
    (["--shots", "10", "--queries", "15"], "exceeds the 20 examples per class"),
    (["--algo", "protonet", "--train-ways", "1000"], "ways=1000 exceeds the 544 classes"),
])
def test_cli_impossible_episodes(extra, message, capsys, tmp_path, monkeypatch):
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path))
  _cli_error(["train", "--dataset", "omniglot", "--data-dir", SHARED, "--train-split", "background_small1",
              "--eval-split", "background_small1", *extra], message, capsys)


def test_cli_refuses_ignored_options_before_it_writes_a_run_directory(tmp_path, capsys):
  run_dir = tmp_path / "run"
  _cli_error(["train", "--dataset", "omniglot", "--algo", "relation", "--conv-features", "mean", "--out-dir", run_dir],
             "relation compares the maps themselves", capsys)
  assert not run_dir.exists()


def test_cli_output_directory_not_writable(tmp_path, capsys):
  blocker = tmp_path / "file.txt"
  blocker.write_text("I am a file")
  _cli_error(["train", "--steps", "10", "--out-dir", blocker / "run"], "file.txt", capsys)


def test_cli_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
  _cli_error(["eval", tmp_path], "holds no run.json", capsys)


def test_cli_plot_of_a_run_without_metrics(tmp_path, capsys):
  (tmp_path / "run.json").write_text("{}")
  _cli_error(["plot", tmp_path], "holds no records", capsys)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("saved") / "run"
  assert main(["train", "--steps", "20", "--chunk", "10", "--eval-tasks", "5", "--out-dir", str(run_dir)]) == 0
  return run_dir


def _snapshot(run_dir: Path) -> dict:
  """Every file of the run but its error log."""
  return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
          if p.is_file() and p.name != "errors.log"}


def test_existing_run_is_not_overwritten(saved_run, capsys):
  before = _snapshot(saved_run)
  _cli_error(["train", "--steps", "20", "--out-dir", saved_run], "already holds a run", capsys)
  assert _snapshot(saved_run) == before
  log = (Path(saved_run) / "errors.log").read_text()
  assert f"metajax train --steps 20 --out-dir {saved_run}" in log and "already holds a run" in log


def test_resume_with_changed_settings_is_refused_and_loses_nothing(saved_run, capsys):
  before = _snapshot(saved_run)
  _cli_error(["train", "--steps", "40", "--algo", "meta-sgd", "--out-dir", saved_run, "--resume"],
             "--algo was 'maml' in the saved run, not 'meta-sgd'", capsys)
  _cli_error(["train", "--steps", "40", "--inner-steps", "3", "--out-dir", saved_run, "--resume"],
             "--inner-steps was 1", capsys)
  assert _snapshot(saved_run) == before


def test_eval_at_bad_shots_or_queries_is_refused_and_loses_nothing(saved_run, capsys):
  before = _snapshot(saved_run)
  _cli_error(["eval", saved_run, "--shots", "0"], "--shots must be a positive integer", capsys)
  _cli_error(["eval", saved_run, "--eval-queries", "0"], "--eval-queries must be a positive integer", capsys)
  assert _snapshot(saved_run) == before


def test_eval_at_a_step_not_kept_or_on_a_sinusoid_split_is_refused(saved_run, capsys):
  before = _snapshot(saved_run)
  _cli_error(["eval", saved_run, "--step", "15"], "no checkpoint at step 15", capsys)
  _cli_error(["eval", saved_run, "--step", "15"], "it keeps steps [10, 20]", capsys)
  _cli_error(["eval", saved_run, "--eval-split", "val"], "--eval-split 'val': sinusoid tasks are generated", capsys)
  _cli_error(["train", "--steps", "2", "--train-split", "background"], "sinusoid tasks are generated", capsys)
  assert _snapshot(saved_run) == before


def test_eval_with_other_queries_writes_its_own_file(saved_run, capsys):
  assert main(["eval", str(saved_run), "--eval-tasks", "5", "--eval-queries", "3"]) == 0
  written = json.loads((saved_run / "eval-20-5tasks-10shot-3queries-1inner.json").read_text())
  assert (written["eval_tasks"], written["eval_queries"]) == (5, 3) and written["eval_loss"] >= 0


def test_resume_beyond_requested_steps(saved_run, capsys):
  _cli_error(["train", "--steps", "10", "--chunk", "10", "--eval-tasks", "5", "--out-dir", saved_run,
              "--resume"], "beyond --steps 10", capsys)


def _copy(run_dir: Path, dest: Path) -> Path:
  import shutil
  shutil.copytree(run_dir, dest)
  return dest


def test_corrupt_checkpoint(saved_run, tmp_path, capsys):
  run_dir = _copy(saved_run, tmp_path / "run")
  for f in (run_dir / "checkpoints" / "20").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  _cli_error(["eval", run_dir], "cannot be restored", capsys)


def test_checkpoint_of_another_model(saved_run, tmp_path, capsys):
  run_dir = _copy(saved_run, tmp_path / "run")
  settings = json.loads((run_dir / "run.json").read_text())
  settings["algo"] = "meta-sgd"  # a learner with more meta-parameters than the checkpoint holds
  (run_dir / "run.json").write_text(json.dumps(settings))
  _cli_error(["eval", run_dir], "cannot be restored into this model", capsys)


def test_foreign_checkpoint_directory(tmp_path, capsys):
  import orbax.checkpoint as ocp
  run_dir = tmp_path / "run"
  assert main(["train", "--steps", "1", "--chunk", "1", "--eval-tasks", "2", "--out-dir", str(run_dir)]) == 0
  import shutil
  shutil.rmtree(run_dir / "checkpoints")
  mngr = ocp.CheckpointManager(run_dir / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(1, args=ocp.args.StandardSave({"something": jnp.ones(3)}))
  mngr.wait_until_finished()
  _cli_error(["eval", run_dir], "cannot be restored", capsys)


def test_corrupt_run_file(saved_run, tmp_path, capsys):
  run_dir = _copy(saved_run, tmp_path / "run")
  (run_dir / "run.json").write_text("{not json")
  _cli_error(["train", "--steps", "40", "--out-dir", run_dir, "--resume"], "not valid JSON", capsys)
  _cli_error(["eval", run_dir], "not valid JSON", capsys)


def test_catalogue_is_at_least_55_entries():
  others = [n for n in dir(sys.modules[__name__]) if n.startswith("test_") and n not in (
      "test_python_api_and_loaders", "test_cli_options", "test_catalogue_is_at_least_55_entries")]
  assert len(API_CASES) + len(LOADER_CASES) + len(CLI_CASES) + len(others) >= 55


def _largest_file(step_dir: Path) -> Path:
  return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != checkpoint.RECORD),
             key=lambda p: p.stat().st_size)


def _overwrite_bytes(path: Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,message", [
    (_overwrite_bytes, "does not match its SHA-256 digest"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "does not match its SHA-256 digest"),
    (lambda p: p.unlink(), "is missing"),
], ids=["overwritten bytes", "truncated", "deleted file"])
def test_damaged_checkpoint_is_named_on_eval_and_resume_falls_back(damage, message, saved_run, tmp_path, capsys):
  run_dir = _copy(saved_run, tmp_path / "run")
  damaged = _largest_file(run_dir / "checkpoints" / "20")
  damage(damaged)
  name = damaged.relative_to(run_dir / "checkpoints" / "20").as_posix()
  _cli_error(["eval", run_dir], f"checkpoint {run_dir.resolve()}/checkpoints/20 cannot be restored: file {name} "
             + message, capsys)
  summary = (run_dir / "summary.json").read_bytes()
  assert main(["train", "--steps", "30", "--chunk", "10", "--eval-tasks", "5", "--out-dir", str(run_dir),
               "--resume"]) == 0
  err = capsys.readouterr().err
  assert "resuming from checkpoint 10 instead" in err and message in err
  assert (run_dir / "checkpoints" / "20.unusable").is_dir()  # kept for inspection
  _, _, state = load_run(run_dir)
  assert int(state.step) == 30
  assert summary != (run_dir / "summary.json").read_bytes()  # the resumed run wrote its own


def test_checkpoints_swapped_between_runs_are_refused(saved_run, tmp_path, capsys):
  other = tmp_path / "other"
  assert main(["train", "--steps", "20", "--chunk", "10", "--eval-tasks", "5", "--seed", "1",
               "--out-dir", str(other)]) == 0
  run_dir = _copy(saved_run, tmp_path / "run")
  import shutil
  shutil.rmtree(run_dir / "checkpoints" / "20")
  shutil.copytree(other / "checkpoints" / "20", run_dir / "checkpoints" / "20")
  _cli_error(["eval", run_dir], "written by a run with other settings", capsys)
