"""The ``metajax`` console script."""
from __future__ import annotations

import json

import numpy as np
import pytest

from metajax.harness.cli import main
from metajax.learners import REGISTRY
from tests.test_data import SHARED


def test_train_sinusoid_prints_an_evaluation_line_and_writes_metrics(tmp_path, capsys):
  code = main(["train", "--steps", "300", "--chunk", "100", "--eval-tasks", "50",
               "--out-dir", str(tmp_path)])
  assert code == 0
  out = capsys.readouterr().out
  assert "eval on 50 new sinusoid tasks" in out and "95% CI" in out
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [100, 200, 300]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["eval_loss"] < summary["eval_loss_before"]


def test_metrics_record_each_chunks_mean_largest_and_last_loss_and_largest_grad_norm(tmp_path):
  """A chunk of 10 steps records the mean, largest and last of the losses that ten one-step chunks
  record one by one, so a spike at a checkpoint shows though the chunk's mean hides it; and the
  largest meta-gradient norm, so does a gradient spike."""
  records = {}
  for chunk in (1, 10):
    assert main(["train", "--steps", "10", "--chunk", str(chunk), "--eval-tasks", "5",
                 "--out-dir", str(tmp_path / str(chunk))]) == 0
    records[chunk] = [json.loads(line) for line in (tmp_path / str(chunk) / "metrics.jsonl").read_text().splitlines()]
  losses = np.array([r["loss"] for r in records[1]])
  norms = np.array([r["grad_norm"] for r in records[1]])
  assert [r["loss_max"] for r in records[1]] == [r["loss_last"] for r in records[1]] == list(losses)
  assert [r["grad_norm_max"] for r in records[1]] == list(norms)
  (fused,) = records[10]
  np.testing.assert_allclose([fused["loss"], fused["loss_max"], fused["loss_last"], fused["grad_norm"],
                              fused["grad_norm_max"]], [losses.mean(), losses.max(), losses[-1], norms.mean(),
                                                        norms.max()], rtol=1e-5)
  assert fused["loss_max"] > fused["loss"] and fused["grad_norm_max"] > fused["grad_norm"]


def _tiny_run(algo: str, tmp_path, monkeypatch) -> list[str]:
  """``metajax train`` options for a run of ``algo`` that takes seconds: sinusoid, or for
  classifiers Omniglot's small background sets at width 8."""
  if not REGISTRY[algo].classification_only:
    return ["--algo", algo, "--chunk", "2", "--meta-batch", "4", "--inner-steps", "2", "--eval-tasks", "20"]
  if not (SHARED / "omniglot").is_dir():
    pytest.skip(f"{algo} needs Omniglot under {SHARED} (set METAJAX_TEST_DATA)")
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  return ["--algo", algo, "--dataset", "omniglot", "--data-dir", str(SHARED), "--train-split", "background_small1",
          "--eval-split", "background_small2", "--width", "8", "--chunk", "2", "--meta-batch", "2",
          "--queries", "2", "--eval-queries", "2", "--eval-tasks", "6"]


# Matching and Relation go through the CLI as ProtoNet does (the conformance suite covers them
# as learners); their Conv4 compiles cost ~25 s each, so they run with -m slow.
SLOW_CLI = ("matching", "matching-fce", "relation")


@pytest.mark.parametrize("algo", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_CLI else a
                                  for a in sorted(REGISTRY)])
def test_every_algorithm_trains_resumes_plots_and_evaluates(algo, tmp_path, capsys, monkeypatch):
  run_dir = tmp_path / "run"
  common = ["train", *_tiny_run(algo, tmp_path, monkeypatch), "--out-dir", str(run_dir)]
  assert main(common + ["--steps", "2"]) == 0
  assert main(common + ["--steps", "4", "--resume"]) == 0
  out = capsys.readouterr().out
  assert "after 4 meta-steps: " + ("accuracy" if REGISTRY[algo].classification_only else "MSE") in out
  assert ("inner step" in out) == REGISTRY[algo].inner_steps
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["steps"] == 4 and summary["algo"] == algo and np.isfinite(summary["eval_loss"])
  assert main(["plot", str(run_dir), "--width", "300", "--height", "200"]) == 0
  written = capsys.readouterr().out
  assert "curves.png" in written and ("sinusoid.png" in written) == (not REGISTRY[algo].classification_only)
  assert main(["eval", str(run_dir), "--eval-tasks", "10"]) == 0
  assert "eval on 10 new" in capsys.readouterr().out


def test_eval_on_the_training_split_tests_the_trained_classes_and_names_them(tmp_path, capsys, monkeypatch):
  run_dir = tmp_path / "run"
  tiny = _tiny_run("protonet", tmp_path, monkeypatch)
  assert main(["train", *tiny, "--steps", "2", "--out-dir", str(run_dir)]) == 0
  capsys.readouterr()
  for split in ("background_small2", "background_small1"):  # the run's test split, then its training split
    assert main(["eval", str(run_dir), "--eval-tasks", "10", "--eval-split", split]) == 0
  out = capsys.readouterr().out
  assert "(5-way 1-shot) after" in out and "(5-way 1-shot, background_small1 split) after" in out
  own = json.loads((run_dir / "eval-2-10tasks-1shot-2queries.json").read_text())
  trained_on = json.loads((run_dir / "eval-2-10tasks-1shot-2queries-background_small1.json").read_text())
  assert (own["eval_split"], trained_on["eval_split"]) == ("background_small2", "background_small1")
  assert own["eval_accuracy"] != trained_on["eval_accuracy"]
  assert main(["eval", str(run_dir), "--eval-split", "no_such_split"]) == 2
  assert "no_such_split" in capsys.readouterr().err


def test_train_mini_imagenet_from_a_folder_tree(tmp_path, capsys, monkeypatch):
  from tests.test_mini_imagenet import _folders
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  root = _folders(tmp_path / "mini-imagenet", classes=3, per_class=4)
  assert main(["train", "--dataset", "mini-imagenet", "--data-dir", str(root), "--algo", "fomaml", "--ways", "3",
               "--width", "4", "--steps", "2", "--chunk", "2", "--meta-batch", "2", "--queries", "1",
               "--eval-queries", "1", "--eval-tasks", "4"]) == 0
  assert "eval on 4 new mini-imagenet tasks (3-way 1-shot, 1 inner step(s)) after 2 meta-steps: accuracy" in \
      capsys.readouterr().out


@pytest.mark.parametrize("carry_mode", ["mean", "sequential"])
def test_reptile_with_its_papers_protocol_resumes_exactly_with_its_carried_inner_state(carry_mode, tmp_path, capsys):
  """Inner Adam whose state is carried (and checkpointed in meta_params), support mini-batches, outer
  SGD with a linearly annealed step: an interrupted run continues to the same numbers."""
  protocol = ["train", "--algo", "reptile", "--inner-optimizer", "adam", "--carry-inner-state", "--carry-mode",
              carry_mode, "--inner-lr", "0.01",
              "--inner-steps", "3", "--inner-batch", "4", "--eval-inner-batch", "5", "--outer-optimizer", "sgd",
              "--outer-lr", "1", "--outer-lr-decay", "linear", "--outer-lr-decay-steps", "6", "--meta-batch", "3",
              "--shots", "5", "--train-shots", "8", "--chunk", "2", "--eval-tasks", "10"]
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  assert main(protocol + ["--steps", "6", "--out-dir", str(straight)]) == 0
  assert main(protocol + ["--steps", "2", "--out-dir", str(resumed)]) == 0
  assert main(protocol + ["--steps", "6", "--out-dir", str(resumed), "--resume"]) == 0
  capsys.readouterr()
  summaries = [json.loads((run / "summary.json").read_text()) for run in (straight, resumed)]
  assert summaries[0]["steps"] == summaries[1]["steps"] == 6
  assert summaries[0]["eval_loss"] == summaries[1]["eval_loss"] and np.isfinite(summaries[0]["eval_loss"])
