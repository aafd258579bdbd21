"""The ``metajax`` console script."""
from __future__ import annotations

import json

import pytest

from metajax.cli import main
from tests.test_data import SHARED, needs_shared


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


@needs_shared
@pytest.mark.parametrize("algo", ["fomaml", "protonet", pytest.param("rnn", marks=pytest.mark.slow),
                                  pytest.param("meta-lstm", marks=pytest.mark.slow)])
def test_train_omniglot_small(algo, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  code = main(["train", "--dataset", "omniglot", "--data-dir", str(SHARED), "--train-split",
               "background_small1", "--eval-split", "background_small2", "--width", "8",
               "--steps", "4", "--chunk", "2", "--meta-batch", "2", "--queries", "2",
               "--eval-queries", "2", "--eval-tasks", "6", "--algo", algo])
  assert code == 0
  out = capsys.readouterr().out
  assert "5-way 1-shot" in out and "after 4 meta-steps: accuracy" in out
  assert ("inner step" in out) == (algo in ("fomaml", "meta-lstm"))  # the others adapt without steps


@pytest.mark.parametrize("algo", ["rnn", "meta-lstm", "learned-opt"])
def test_train_sinusoid_with_recurrent_learners_resumes_and_evaluates(algo, tmp_path, capsys):
  common = ["train", "--algo", algo, "--chunk", "2", "--meta-batch", "4", "--inner-steps", "2",
            "--eval-tasks", "20", "--out-dir", str(tmp_path)]
  assert main(common + ["--steps", "2"]) == 0
  assert main(common + ["--steps", "4", "--resume"]) == 0
  out = capsys.readouterr().out
  assert "after 4 meta-steps: MSE" in out
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 4 and summary["eval_loss"] > 0
  assert main(["eval", str(tmp_path), "--eval-tasks", "10"]) == 0
