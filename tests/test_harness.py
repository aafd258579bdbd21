"""The training harness: exact resume after SIGKILL, SIGINT, NaN handling, plots."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from metajax.harness import checkpoint
from metajax.harness.args import LATER_OPTIONS, TrainArgs
from metajax.harness.cli import main
from metajax.harness.run import fingerprint, load_run

TRAIN = ["train", "--steps", "6000", "--chunk", "200", "--eval-tasks", "20"]


def _cli(args, **kw):
  return subprocess.Popen([sys.executable, "-m", "metajax", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_checkpoint(run_dir: Path, proc, timeout=120.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 400 for p in ckpts.iterdir()):
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  whole, broken = tmp_path / "whole", tmp_path / "broken"
  proc = _cli(TRAIN + ["--out-dir", str(broken)])
  _wait_for_checkpoint(broken, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in (broken / "checkpoints").iterdir() if p.name.isdigit())
  assert killed_at < 6000, "the run finished before it could be killed"
  assert main(TRAIN + ["--out-dir", str(broken), "--resume"]) == 0
  assert main(TRAIN + ["--out-dir", str(whole)]) == 0
  _, _, a = load_run(whole)
  _, _, b = load_run(broken)
  assert int(a.step) == int(b.step) == 6000
  chex.assert_trees_all_equal(a, b)
  lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
  strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]
  assert strip(lines(whole)) == strip(lines(broken))
  assert json.loads((whole / "summary.json").read_text())["eval_loss"] == \
      json.loads((broken / "summary.json").read_text())["eval_loss"]


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  run_dir = tmp_path / "run"
  proc = _cli(["train", "--steps", "200000", "--chunk", "200", "--out-dir", str(run_dir)])
  _wait_for_checkpoint(run_dir, proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130
  assert "interrupted; checkpoint saved at meta-step" in err and "Traceback" not in err
  step = int(err.split("meta-step ")[1].split()[0])
  assert checkpoint.manager(run_dir / "checkpoints", create=False).latest_step() == step


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  run_dir = tmp_path / "run"
  # An outer Adam rate of 1e3 blows the parameters up at the first update.
  code = main(["train", "--steps", "50", "--chunk", "1", "--outer-lr", "1e3", "--out-dir", str(run_dir)])
  err = capsys.readouterr().err
  assert code == 2 and "non-finite loss at meta-step" in err
  bad_step = int(err.split("meta-step ")[1].split(";")[0])
  last = checkpoint.manager(run_dir / "checkpoints", create=False).latest_step()
  assert last is not None and last == bad_step - 1
  _, _, state = load_run(run_dir)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state.meta_params))


@pytest.mark.parametrize("size", [(640, 480), (300, 200)])
def test_plot_writes_pngs_of_the_requested_size(tmp_path, size):
  run_dir = tmp_path / "run"
  assert main(["train", "--steps", "400", "--chunk", "100", "--val-every", "2", "--eval-tasks", "10",
               "--out-dir", str(run_dir)]) == 0
  assert main(["plot", str(run_dir), "--width", str(size[0]), "--height", str(size[1])]) == 0
  for name in ("curves.png", "sinusoid.png"):
    path = run_dir / name
    assert path.stat().st_size > 1000
    with Image.open(path) as img:
      assert img.size == size


def test_eval_command_reports_the_saved_run_beside_its_training_summary(tmp_path, capsys):
  run_dir = tmp_path / "run"
  assert main(["train", "--steps", "300", "--chunk", "100", "--eval-tasks", "10", "--out-dir", str(run_dir)]) == 0
  capsys.readouterr()
  summary = (run_dir / "summary.json").read_text()
  assert "train_time_s" in summary
  assert main(["eval", str(run_dir), "--eval-tasks", "30", "--eval-inner-steps", "3"]) == 0
  assert "eval on 30 new sinusoid tasks (10-shot, 3 inner step(s))" in capsys.readouterr().out
  assert (run_dir / "summary.json").read_text() == summary  # the training summary is never overwritten
  written = json.loads((run_dir / "eval-300-30tasks-10shot-100queries-3inner.json").read_text())
  assert written["eval_tasks"] == 30 and written["eval_inner_steps"] == 3 and written["steps"] == 300
  assert {"eval_loss", "eval_loss_ci95", "eval_loss_median", "eval_diverged_tasks"} <= set(written)


def test_eval_at_other_shots_tests_the_model_trained_at_the_runs_train_shots(tmp_path, capsys):
  from metajax.harness.args import TrainArgs
  from metajax.harness.problem import build
  from metajax.harness.run import evaluate
  run_dir = tmp_path / "run"
  assert main(["train", "--steps", "200", "--chunk", "100", "--eval-tasks", "10", "--shots", "5", "--train-shots",
               "10", "--out-dir", str(run_dir)]) == 0
  assert main(["eval", str(run_dir), "--eval-tasks", "40", "--shots", "3"]) == 0
  assert "eval on 40 new sinusoid tasks (3-shot of a 10-shot-trained model, 1 inner step(s))" in capsys.readouterr().out
  written = json.loads((run_dir / "eval-200-40tasks-3shot-100queries-1inner.json").read_text())
  assert (written["shots"], written["train_shots"]) == (3, 10)
  args, _, state = load_run(run_dir, shots=3, eval_tasks=40)
  assert (args.shots, args.train_shots) == (3, 10)
  # The same checkpoint, tested by a problem built from scratch for 3-shot tests of a 10-shot-trained model.
  fresh = build(TrainArgs(**{**json.loads((run_dir / "run.json").read_text()), "shots": 3, "eval_tasks": 40}))
  expected = evaluate(fresh, state, 40, seed=10_000)["loss"]
  np.testing.assert_allclose(written["eval_loss"], np.mean(expected), rtol=1e-6)
  at_ten = evaluate(load_run(run_dir, shots=10)[1], state, 40, seed=10_000)["loss"]
  assert np.mean(expected) > np.mean(at_ten)  # fewer support points: a worse fit
  with pytest.raises(ValueError, match="cannot override"):
    load_run(run_dir, ways=3)


def test_eval_at_a_kept_earlier_step_tests_that_checkpoint(tmp_path, capsys):
  from metajax.harness.run import evaluate
  run_dir = tmp_path / "run"
  assert main(["train", "--steps", "300", "--chunk", "100", "--eval-tasks", "10", "--out-dir", str(run_dir)]) == 0
  assert main(["eval", str(run_dir), "--step", "100", "--eval-tasks", "30"]) == 0
  assert "after 100 meta-steps" in capsys.readouterr().out
  written = json.loads((run_dir / "eval-100-30tasks-10shot-100queries-1inner.json").read_text())
  _, problem, early = load_run(run_dir, step=100, eval_tasks=30)
  _, _, latest = load_run(run_dir)
  assert (written["steps"], int(early.step), int(latest.step)) == (100, 100, 300)
  losses = {int(s.step): np.mean(evaluate(problem, s, 30, seed=10_000)["loss"]) for s in (early, latest)}
  np.testing.assert_allclose(written["eval_loss"], losses[100], rtol=1e-6)
  assert losses[100] > losses[300]  # 200 more meta-steps fit better


def test_diverged_tasks_are_counted_and_the_median_reported():
  from metajax.harness.run import DIVERGENCE_FACTOR, summarize
  before = np.full(1000, 3.0)
  after = np.full(1000, 0.05)
  after[7], after[8] = 3.8e24, np.nan
  summary = summarize({"loss": after, "loss_before": before})
  assert summary["eval_diverged_tasks"] == 2
  assert summary["eval_divergence_threshold"] == DIVERGENCE_FACTOR * 3.0
  assert not np.isfinite(summary["eval_loss"]) or summary["eval_loss"] > 1e20
  assert summary["eval_loss_before_median"] == 3.0
  healthy = summarize({"loss": np.full(10, 0.05), "loss_before": np.full(10, 3.0)})
  assert healthy["eval_diverged_tasks"] == 0 and healthy["eval_loss_median"] == 0.05


def test_algorithm_defaults_fill_only_unset_options():
  from metajax.harness.args import TrainArgs
  proto = TrainArgs(dataset="omniglot", algo="protonet")
  assert (proto.meta_batch, proto.train_ways, proto.ways, proto.queries, proto.eval_queries) == (1, 60, 5, 5, 15)
  mine = TrainArgs(dataset="omniglot", algo="protonet", meta_batch=4, train_ways=10, queries=3)
  assert (mine.meta_batch, mine.train_ways, mine.queries) == (4, 10, 3)
  maml = TrainArgs(dataset="omniglot", algo="maml", ways=20, shots=5)
  assert (maml.meta_batch, maml.train_ways, maml.train_shots, maml.queries) == (32, 20, 5, 15)


def test_training_time_accumulates_across_resumes_and_a_torn_metrics_line_is_dropped(tmp_path, capsys):
  run_dir = tmp_path / "run"
  base = ["train", "--chunk", "100", "--eval-tasks", "5", "--out-dir", str(run_dir)]
  assert main(base + ["--steps", "200"]) == 0
  first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["time_s"]
  with open(run_dir / "metrics.jsonl", "a") as f:
    f.write('{"step": 300, "los')  # a kill while writing
  assert main(base + ["--steps", "400", "--resume"]) == 0
  records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [100, 200, 300, 400]
  times = [r["time_s"] for r in records]
  assert times[1] == first and times == sorted(times) and times[2] > first
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["train_time_s"] >= times[-1]


def test_checkpoint_fingerprints_of_older_runs_still_match():
  # Digests of these settings before any LATER_OPTIONS existed: an option added to TrainArgs must
  # go into LATER_OPTIONS (at the value older runs had), or every saved run stops resuming.
  assert fingerprint(TrainArgs()) == "1f1e8a52af540e99"
  assert fingerprint(TrainArgs(dataset="omniglot", algo="reptile", inner_optimizer="adam", carry_inner_state=True,
                               downsample="stride")) == "32cca90eaab2439b"
  assert fingerprint(TrainArgs(dataset="omniglot", conv_features="mean")) != fingerprint(TrainArgs(dataset="omniglot"))
  assert fingerprint(TrainArgs(dataset="omniglot", resample="nearest")) != fingerprint(TrainArgs(dataset="omniglot"))
  assert fingerprint(TrainArgs(dataset="omniglot", invert=True)) != fingerprint(TrainArgs(dataset="omniglot"))
  assert fingerprint(TrainArgs(dataset="omniglot", conv_init="torch")) != fingerprint(TrainArgs(dataset="omniglot"))
  assert fingerprint(TrainArgs(dataset="omniglot", unpadded_blocks=2)) != fingerprint(TrainArgs(dataset="omniglot"))
  clipped = dict(dataset="omniglot", algo="relation", clip_grad_norm=0.5)
  assert fingerprint(TrainArgs(**clipped, clip_scope="network")) != fingerprint(TrainArgs(**clipped))


def test_a_run_saved_before_an_option_existed_resumes_with_its_old_value(tmp_path, capsys):
  run_dir = tmp_path / "run"
  base = ["train", "--chunk", "10", "--eval-tasks", "5", "--out-dir", str(run_dir)]
  assert main(base + ["--steps", "10"]) == 0
  saved = json.loads((run_dir / "run.json").read_text())
  (run_dir / "run.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in LATER_OPTIONS}))
  assert main(base + ["--steps", "20", "--conv-features", "mean", "--resume"]) == 2
  assert "--conv-features was 'flatten' in the saved run, not 'mean'" in capsys.readouterr().err
  assert main(base + ["--steps", "20", "--resume"]) == 0
  args, _, state = load_run(run_dir)
  assert int(state.step) == 20 and args.conv_features == "flatten"


def test_protonet_trains_on_train_ways_and_shots_and_evaluates_on_ways(tmp_path, monkeypatch):
  from metajax.harness.args import TrainArgs
  from metajax.harness.problem import build
  from metajax.harness.run import evaluate, train
  from tests.test_data import SHARED
  if not (SHARED / "omniglot").is_dir():
    pytest.skip(f"needs Omniglot under {SHARED} (set METAJAX_TEST_DATA)")
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path))
  args = TrainArgs(dataset="omniglot", data_dir=str(SHARED), algo="protonet", train_ways=10, ways=5, width=8,
                   train_shots=2, meta_batch=2, steps=2, chunk=2, train_split="background_small1",
                   eval_split="background_small2")
  problem = build(args)
  batch = problem.sample_fn(jax.random.PRNGKey(0), problem.train_data)
  assert batch.x_support.shape[1] == 10 * 2 and int(batch.y_query.max()) == 9
  held_out = problem.eval_tasks(jax.random.PRNGKey(0), 3)
  assert held_out.x_support.shape[1] == 5 and held_out.x_query.shape[1] == 5 * 15
  fewer = problem.eval_tasks(jax.random.PRNGKey(0), 3, queries=2)  # another test protocol's query count
  assert fewer.x_query.shape[1] == 5 * 2 and fewer.x_support.shape == held_out.x_support.shape
  trained = train(args, problem)
  scores = evaluate(problem, trained.state, 6, seed=0)
  assert scores["accuracy"].shape == (6,) and np.all((scores["accuracy"] >= 0) & (scores["accuracy"] <= 1))
  assert set(np.unique(np.round(scores["accuracy"] * 75))) <= set(range(76))  # 5 ways x 15 queries each
  in_pieces = evaluate(problem, trained.state, 6, seed=0, chunk=4)  # image episodes: the same tasks
  np.testing.assert_array_equal(in_pieces["accuracy"], scores["accuracy"])


def test_build_asks_the_loader_for_the_runs_images_and_builds_conv4_as_asked(monkeypatch):
  from metajax.data.images import ImageClasses
  from metajax.harness import problem
  from metajax.learners import registry
  from metajax.models import Conv4
  asked, made = [], []
  images = np.random.default_rng(0).integers(0, 256, (12, 20, 28, 28), dtype=np.uint8)

  def loader(split, data_dir, **options):
    asked.append(options)
    return ImageClasses(images, np.array([f"c{i}" for i in range(len(images))]))

  monkeypatch.setitem(problem.LOADERS, "omniglot", loader)
  monkeypatch.setattr(registry, "Conv4", lambda **options: made.append(options) or Conv4(**options))

  def first_kernel(**options) -> np.ndarray:
    state = problem.build(TrainArgs(dataset="omniglot", algo="protonet", train_ways=5, width=8, **options)).state
    paths = jax.tree_util.tree_leaves_with_path(state.meta_params)
    return next(np.asarray(v) for path, v in paths if "conv_0" in jax.tree_util.keystr(path)).ravel()

  lecun, torch = first_kernel(), first_kernel(invert=True, resample="nearest", conv_init="torch", unpadded_blocks=2)
  assert asked == [dict(resample="lanczos", invert=False)] * 2 + [dict(resample="nearest", invert=True)] * 2
  bound = 1 / 3  # 1/sqrt(fan_in) of the 3x3 kernels on one channel
  assert lecun.shape == torch.shape == (9 * 8,) and np.abs(torch).max() <= bound < np.abs(lecun).max()
  assert {(m["conv_init"], m["unpadded_blocks"]) for m in made} == {("lecun", 0), ("torch", 2)}
  with pytest.raises(ValueError, match="--unpadded-blocks must be 0 to 4 .* got 2.0"):  # --set unpadded_blocks=2.0
    TrainArgs(dataset="omniglot", unpadded_blocks=2.0)


def test_evaluation_tasks_do_not_depend_on_the_chunk_and_fewer_tasks_are_a_prefix():
  from metajax.harness.problem import build
  from metajax.harness.run import evaluate
  problem = build(TrainArgs(shots=5, eval_queries=10))
  whole = evaluate(problem, problem.state, 10, seed=3, chunk=100)["loss"]
  assert whole.shape == (10,) and len(np.unique(whole)) == 10  # ten different tasks
  for chunk in (1, 3, 7):
    np.testing.assert_allclose(evaluate(problem, problem.state, 10, seed=3, chunk=chunk)["loss"], whole, rtol=1e-6)
  np.testing.assert_allclose(evaluate(problem, problem.state, 4, seed=3, chunk=3)["loss"], whole[:4], rtol=1e-6)
  assert not np.allclose(evaluate(problem, problem.state, 10, seed=4)["loss"], whole)


def test_outer_learning_rate_cosine_annealing_shrinks_the_updates():
  import optax
  from metajax.harness.args import TrainArgs
  from metajax.harness.problem import outer_optimizer
  params, grads = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, -2.0, 0.5])}

  def update_norm(args, step):
    opt = outer_optimizer(args)
    state = opt.init(params)
    for _ in range(step):
      _, state = opt.update(grads, state, params)
    updates, _ = opt.update(grads, state, params)
    return float(optax.tree.norm(updates))

  constant, cosine = TrainArgs(), TrainArgs(outer_lr_decay_steps=100)
  assert update_norm(cosine, 0) == pytest.approx(update_norm(constant, 0))
  assert update_norm(cosine, 50) == pytest.approx(0.5 * update_norm(constant, 50), rel=1e-3)
  assert update_norm(cosine, 100) == pytest.approx(0.0, abs=1e-12)
  halving = TrainArgs(outer_lr_decay="halve", outer_lr_decay_steps=20)  # the ProtoNet paper's staircase
  assert [update_norm(halving, s) / update_norm(constant, s) for s in (0, 19, 20, 39, 40, 65)] == \
      pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.125], rel=1e-5)
  with pytest.raises(ValueError, match="--outer-lr-decay-steps must be a non-negative integer"):
    TrainArgs(outer_lr_decay_steps=-1)


def test_clip_scope_network_clips_each_network_apart_as_the_relation_networks_code():
  import optax
  from metajax.harness.problem import clip_each_network, outer_optimizer
  grads = {"embed": {"w": jnp.full((4,), 3.0)}, "relation": {"w": jnp.full((4,), 0.1), "b": jnp.full((2,), 0.1)}}
  sgd = dict(dataset="omniglot", algo="relation", outer_optimizer="sgd", outer_lr=1.0, clip_grad_norm=0.5)
  opt = outer_optimizer(TrainArgs(**sgd, clip_scope="network"))
  apart, _ = opt.update(grads, opt.init(grads), grads)
  np.testing.assert_allclose(optax.tree.norm(apart["embed"]), 0.5, rtol=1e-6)  # 6.0 clipped to 0.5
  chex.assert_trees_all_close(apart["relation"], jax.tree.map(jnp.negative, grads["relation"]))  # 0.24: kept
  opt = outer_optimizer(TrainArgs(**sgd))  # clip_scope "all": one norm over both, so both shrink
  whole, _ = opt.update(grads, opt.init(grads), grads)
  np.testing.assert_allclose(optax.tree.norm(whole), 0.5, rtol=1e-6)
  assert float(optax.tree.norm(whole["relation"])) < 0.03
  with pytest.raises(TypeError, match="clip_each_network: updates must be a dict of networks, got Array"):
    clip_each_network(0.5).update(jnp.ones(3), optax.EmptyState())


def test_reptile_outer_sgd_anneals_linearly_and_the_inner_adam_has_no_momentum():
  import optax
  from metajax.harness.args import TrainArgs
  from metajax.harness.problem import inner_optimizer, outer_optimizer
  args = TrainArgs(algo="reptile", outer_optimizer="sgd", outer_lr=1.0, outer_lr_decay="linear",
                   outer_lr_decay_steps=4, inner_optimizer="adam", inner_lr=1e-3)
  params, grads = {"w": jnp.zeros(2)}, {"w": jnp.array([0.5, -2.0])}
  opt = outer_optimizer(args)
  state = opt.init(params)
  for step in range(5):
    updates, state = opt.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -(1 - min(step, 4) / 4) * grads["w"], rtol=1e-6)
  inner = inner_optimizer(args)
  state = inner.init(params)
  _, state = inner.update(grads, state, params)
  second = {"w": jnp.array([-1.0, 1.0])}
  updates, _ = inner.update(second, state, params)   # β1 = 0: no first moment carried over
  v = 0.999 * 0.001 * grads["w"] ** 2 + 0.001 * second["w"] ** 2
  np.testing.assert_allclose(updates["w"], -1e-3 * second["w"] / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8), rtol=1e-5)
  assert inner_optimizer(TrainArgs()) is None and isinstance(outer_optimizer(TrainArgs()), optax.GradientTransformation)
