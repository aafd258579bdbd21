"""The Omniglot table script's protocols, its refusals to test one cell with another's model, and its
merging of rows (``benchmarks/omniglot_table.py``; one short training run on the small Omniglot sets)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import tarfile
from pathlib import Path

import jax
import matplotlib.pyplot
import numpy as np
import pytest

from metajax.data.images import ImageClasses
from metajax.harness.args import LATER_OPTIONS, TrainArgs
from metajax.harness.run import RUN_FILE
from tests.test_data import SHARED, needs_shared

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "omniglot_table.py"
_spec = importlib.util.spec_from_file_location("omniglot_table", _SCRIPT)
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


def _ns(tmp_path: Path, **kw) -> argparse.Namespace:
  fields = dict(algo="reptile", ways=5, shots=5, model_shots=1, split="vinyals", test_tasks=600, eval_chunk=20,
                runs_dir=str(tmp_path), data_dir=str(tmp_path / "data"), seed=0, table=tmp_path / "rows.json",
                parked_dir=str(tmp_path / "parked"))
  return argparse.Namespace(**{**fields, **kw})


@pytest.mark.parametrize("algo", sorted(table.PAPER))
def test_every_protocol_gives_valid_settings_at_every_cell(algo, tmp_path):
  for ways, shots in table.CELLS:
    settings, differences = table.protocol(algo, ways, shots)
    args = table._cell_args(_ns(tmp_path, algo=algo, ways=ways, shots=shots), settings)
    assert all(getattr(args, k) == v for k, v in settings.items()), (algo, ways, shots)
    assert all(isinstance(d, str) and d for d in differences)
  with pytest.raises(ValueError, match="no Omniglot protocol for 'anil'"):
    table.protocol("anil", 5, 1)


@pytest.mark.parametrize("algo,ways,inner_lr", [("maml", 20, 2.0), ("maml", 5, 0.4), ("fomaml", 20, 0.1),
                                                  ("fomaml", 5, 0.4)])
def test_only_20_way_maml_takes_finn_et_al_s_inner_step_and_the_others_name_the_difference(algo, ways, inner_lr):
  for shots in (1, 5):
    settings, differences = table.protocol(algo, ways, shots)
    assert settings["inner_lr"] == inner_lr
    assert (table.INNER_STEP_DIFFERENCE in differences) == (inner_lr != 2.0)  # their step on the mean loss: 2.0


@pytest.mark.parametrize("algo", sorted(table.PAPER))
def test_protonet_and_relation_shrink_images_as_their_code_and_each_protocol_names_its_other_image_differences(algo):
  for ways, shots in table.CELLS:
    settings, differences = table.protocol(algo, ways, shots)
    nearest = settings.get("resample") == "nearest"
    assert nearest == (algo in ("protonet", "relation"))
    # Matching networks published no code; every other paper's code shrank the 1-bit PNGs with Pillow.
    assert (table.RESAMPLE_DIFFERENCE in differences) == (not nearest and not algo.startswith("matching"))
    # MAML's and ProtoNet's codes invert the images (1.0 - image); Reptile's and the Relation network's do not.
    assert settings.get("invert", False) == (algo == "protonet")
    assert (table.INVERT_DIFFERENCE in differences) == (algo in ("maml", "fomaml"))
    # ProtoNet's code started its convs as PyTorch before 1.0 did, Relation's as its weights_init; MAML's
    # (Glorot) names its own.
    assert settings.get("conv_init", "lecun") == {"protonet": "torch_legacy", "relation": "sung"}.get(algo, "lecun")
    # The Relation network's code clips each of its two networks' gradients to 0.5.
    assert (settings.get("clip_grad_norm"), settings.get("clip_scope", "all")) == (
        (0.5, "network") if algo == "relation" else (None, "all"))
    # The Relation network's embedding convolves its first two blocks unpadded (5x5 maps), as their code.
    assert settings.get("unpadded_blocks", 0) == (2 if algo == "relation" else 0)


def test_an_ablation_names_its_settings_and_drops_the_differences_it_undoes():
  settings, differences = table.protocol("maml", 20, 1)
  overrides = {"invert": True, "conv_init": "torch", "outer_lr": 5e-4}
  ablated, now = table.ablated(settings, differences, overrides)
  assert "invert" not in settings and "resample" not in settings  # the protocol's own, untouched
  assert {k: ablated[k] for k in overrides} == overrides
  assert now == [d for d in differences if d != table.INVERT_DIFFERENCE] + [
      "ablation: invert=True (the protocol's: False)",
      "ablation: conv_init='torch' (the protocol's: 'lecun')",
      "ablation: outer_lr=0.0005 (the protocol's: 0.001)"]
  # Lanczos by protocol: nearest undoes it, another setting not.
  assert table.RESAMPLE_DIFFERENCE not in table.ablated(settings, differences, {"resample": "nearest"})[1]
  assert table.RESAMPLE_DIFFERENCE in table.ablated(settings, differences, {"invert": True})[1]
  # Away from a protocol that matches their code, an ablation adds its own difference, naming the protocol's value.
  settings, differences = table.protocol("protonet", 20, 5)
  assert table.ablated(settings, differences, {"invert": False, "conv_init": "lecun"})[1] == differences + [
      "ablation: invert=False (the protocol's: True)", "ablation: conv_init='lecun' (the protocol's: 'torch_legacy')"]


def _save_source(ns: argparse.Namespace, **changes) -> Path:
  """A run directory of ``ns``'s model cell holding only the ``run.json`` it would be trained with."""
  source_ns = argparse.Namespace(**{**vars(ns), "shots": ns.model_shots})
  settings, _ = table.protocol(ns.algo, ns.ways, ns.model_shots)
  args = dataclasses.replace(table._cell_args(source_ns, settings), **changes)
  source = Path(ns.runs_dir) / table._cell(ns, ns.model_shots)
  source.mkdir(parents=True)
  (source / RUN_FILE).write_text(json.dumps(dataclasses.asdict(args)))
  return source


def test_testing_with_another_cells_model_is_refused_unless_it_trained_identically(tmp_path, monkeypatch):
  ns = _ns(tmp_path)
  monkeypatch.setattr(table, "PARKED", tmp_path / "parked")
  (tmp_path / "parked").mkdir()
  (tmp_path / "parked" / "vinyals_reptile_5w1s.tar.gz").write_bytes(b"")
  for own in (None, 5):  # the cell's own model, tested again
    with pytest.raises(SystemExit, match="no trained vinyals_reptile_5w5s cell .*; train it first: "
                                         "omniglot_table.py run --algo reptile --ways 5 --shots 5"):
      table.test_cell(_ns(tmp_path, model_shots=own))
  with pytest.raises(SystemExit, match="no trained vinyals_reptile_5w1s cell .*; train it first: "
                                       r"omniglot_table.py run --algo reptile --ways 5 --shots 1 .* \(or unpark it"):
    table.test_cell(ns)
  # Reptile trains both shot cells on 10 shots: a source trained otherwise is named setting by setting.
  _save_source(ns, train_shots=5, inner_lr=0.01)
  with pytest.raises(SystemExit, match=r"vinyals_reptile_5w1s was not trained as vinyals_reptile_5w5s would be: "
                                       r"--train-shots 5 \(this cell: 10\), --inner-lr 0.01 \(this cell: 0.001\); "
                                       "run the cell instead$"):
    table.test_cell(ns)
  # A --seed other than the run's is refused too (its test tasks are keyed by its seed), naming it.
  shutil.rmtree(tmp_path / "vinyals_reptile_5w1s")
  _save_source(ns, seed=3)
  with pytest.raises(SystemExit, match=r": --seed 3 \(this cell: 0\); leave --seed out to test with the run's own$"):
    table.test_cell(ns)


def test_test_takes_the_runs_own_seed_when_none_is_given(tmp_path, monkeypatch):
  ns = _ns(tmp_path, seed=None)
  _save_source(ns, seed=3)
  tested = {}

  def load_cell(cell_ns, source, settings):
    tested["seed"] = cell_ns.seed
    raise FileNotFoundError("stop here")
  monkeypatch.setattr(table, "load_cell", load_cell)
  with pytest.raises(FileNotFoundError, match="stop here"):
    table.test_cell(ns)
  assert tested == {"seed": 3} and ns.seed is None  # the caller's namespace is left as it was


def test_a_source_differing_only_in_resumable_and_test_settings_is_accepted(tmp_path):
  # It passes the settings check (also as saved before LATER_OPTIONS existed) and stops only at
  # loading its (absent) data.
  ns = _ns(tmp_path)
  run_file = _save_source(ns, steps=10, chunk=7, eval_tasks=3, out_dir="elsewhere", shots=1) / RUN_FILE
  saved = json.loads(run_file.read_text())
  run_file.write_text(json.dumps({k: v for k, v in saved.items() if k not in LATER_OPTIONS}))
  with pytest.raises(FileNotFoundError, match=f"data directory '{tmp_path / 'data'}' does not exist"):
    table.test_cell(ns)


def test_a_source_saved_with_another_test_split_is_tested_on_the_cells(tmp_path, monkeypatch):
  ns = _ns(tmp_path)
  _save_source(ns, eval_split="val")  # the test split is a test setting: the model is the same
  asked = {}

  def load_run(source, **overrides):
    asked.update(overrides)
    raise FileNotFoundError("stop here")
  monkeypatch.setattr(table, "load_run", load_run)
  with pytest.raises(FileNotFoundError, match="stop here"):
    table.test_cell(ns)
  assert asked["eval_split"] == "test"


def test_an_ablation_names_its_run_directory_and_refuses_the_cells_own_options(tmp_path):
  ns = _ns(tmp_path, shots=1, set=[table._setting("carry_mode=sequential"), table._setting("inner_lr=0.002")])
  assert table._overrides(ns) == {"carry_mode": "sequential", "inner_lr": 0.002}
  assert table._cell(ns, 1) == "vinyals_reptile_5w1s_carry_mode-sequential_inner_lr-0.002"
  ns.set.reverse()  # the same ablation, whatever the order of its --set options
  assert table._cell(ns, 1) == "vinyals_reptile_5w1s_carry_mode-sequential_inner_lr-0.002"
  for bad in ("ways=20", "steps=10", "carry_mode", "no_such_setting=1"):
    with pytest.raises(argparse.ArgumentTypeError, match=f"'{bad}': expected NAME=VALUE with NAME a training setting"):
      table._setting(bad)


@pytest.mark.parametrize("setting, why", [("inner_lr=fast", "--inner-lr must be a positive finite number, got 'fast'"),
                                           ("carry_mode=seq", r"--carry-mode: unknown value 'seq'; choose one of \(")])
def test_a_set_value_that_training_refuses_stops_the_run_before_it_starts(setting, why, tmp_path):
  ns = _ns(tmp_path, set=[table._setting(setting)])
  settings = {**table.protocol("reptile", 5, 5)[0], **table._overrides(ns)}
  with pytest.raises(SystemExit, match=f"vinyals_reptile_5w5s_{setting.replace('=', '-')}: {why}"):
    table._cell_args(ns, settings)


def test_a_bad_set_is_a_usage_error_of_the_run_command(monkeypatch, capsys):
  monkeypatch.setattr("sys.argv", ["omniglot_table.py", "run", "--algo", "reptile", "--ways", "5", "--shots", "1",
                                   "--set", "ways=20"])
  with pytest.raises(SystemExit) as exit_info:
    table.main()
  assert exit_info.value.code == 2
  assert "argument --set: 'ways=20': expected NAME=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, why", [
    ("--curve-tasks", "0", "'0' is not a positive integer"), ("--steps", "1.5", "'1.5' is not a positive integer"),
    ("--curve-every", "-250", "'-250' is not a positive integer"),
    ("--wall-minutes", "-1", "'-1' is not a number of minutes"), ("--budget-minutes", "nan", "'nan' is not a number"),
    ("--table", "table.png", "'table.png' is not a table file"),
    ("--table", "results/x_ablations.json", "'results/x_ablations.json' is not a table file")])
def test_a_count_or_budget_out_of_range_is_a_usage_error(option, value, why, monkeypatch, capsys):
  monkeypatch.setattr("sys.argv", ["omniglot_table.py", "run", "--algo", "maml", "--ways", "5", "--shots", "1",
                                   option, value])
  with pytest.raises(SystemExit) as exit_info:
    table.main()
  assert exit_info.value.code == 2
  assert f"argument {option}: {why}" in capsys.readouterr().err


def test_an_ablation_row_goes_beside_the_table_and_replaces_only_its_own_row(tmp_path):
  path, row = tmp_path / "rows.json", {"split": "vinyals", "algo": "reptile", "ways": 5, "shots": 1, "accuracy": 1}
  ablation = {**row, "ablation": {"carry_mode": "sequential"}}
  assert table._destination(path, row) == path
  assert table._destination(path, ablation) == tmp_path / "rows_ablations.json"
  for r in (row, ablation, {**ablation, "accuracy": 2}):
    table._store(r, path)
  assert json.loads(path.read_text()) == [row, {**ablation, "accuracy": 2}]


def test_a_tested_cell_is_stored_in_the_table_it_is_given_and_an_ablation_beside_it(tmp_path, monkeypatch):
  monkeypatch.setattr(table, "evaluate", lambda problem, state, tasks, **_: {"accuracy": np.full(tasks, 0.9)})
  monkeypatch.setattr(table, "_with_queries", lambda problem, queries: problem)
  ns = _ns(tmp_path, algo="maml", ways=5, shots=1, test_tasks=4, table=tmp_path / "smoke.json")
  args = argparse.Namespace(steps=60000, meta_batch=32)
  test = lambda **extra: table._test_and_store(ns, args, None, None, 20, 30.0, [], {"meta_batch": 32}, [], **extra)
  test()
  test(ablation={"width": 32})
  [row] = json.loads((tmp_path / "smoke.json").read_text())
  assert (row["accuracy"], row["ci95"], row["meta_steps"], row["test_tasks"]) == (90.0, 0.0, 20, 4)
  assert row["protocol"] == {"meta_batch": 32} and "ablation" not in row
  [ablation] = json.loads((tmp_path / "smoke_ablations.json").read_text())
  assert ablation["ablation"] == {"width": 32}


def test_render_reads_the_table_it_is_given_and_plots_beside_it(tmp_path, monkeypatch, capsys):
  rows = tmp_path / "smoke.json"
  row = {"split": "vinyals", "algo": "maml", "ways": 5, "shots": 1, "accuracy": 98.2, "ci95": 0.3, "paper": 98.7,
         "test_queries": 1, "meta_steps": 20, "planned_steps": 60000, "train_seconds": 90.0,
         "machine": {"device": "cpu"}, "curve": [{"train_time_s": 90.0, "accuracy": 0.95}]}
  rows.write_text(json.dumps([row]))
  monkeypatch.setattr("sys.argv", ["omniglot_table.py", "render", "--table", str(rows)])
  table.main()
  out = capsys.readouterr().out
  assert "| vinyals | maml | 5w1s | 98.20 ± 0.30 | 1 | 98.7 | -0.50, met | 20 (60,000) | 1.5 min | cpu |" in out
  assert f"wrote {tmp_path / 'smoke.png'}" in out and (tmp_path / "smoke.png").stat().st_size > 0


def test_render_puts_each_ablation_beside_its_table_row_and_plots_them_against_meta_steps(tmp_path, monkeypatch,
                                                                                         capsys):
  curve = lambda *acc: [{"step": 250 * (i + 1), "train_time_s": 60.0 * (i + 1), "accuracy": a}
                        for i, a in enumerate(acc)]
  row = {"split": "vinyals", "algo": "maml", "ways": 20, "shots": 1, "accuracy": 86.35, "ci95": 0.63, "paper": 95.8,
         "test_queries": 1, "meta_steps": 750, "planned_steps": 60000, "train_seconds": 180.0,
         "machine": {"device": "cpu"}, "curve": curve(0.6, 0.7, 0.8)}
  ablations = [{**row, "accuracy": 87.29, "ci95": 0.58, "meta_steps": 500, "curve": curve(0.65, 0.75),
                "ablation": {"inner_lr": 2.0}},
               {**row, "algo": "reptile", "ways": 5, "paper": 97.68, "accuracy": 85.2, "meta_steps": 250,
                "curve": curve(0.85), "ablation": {"carry_mode": "sequential", "meta_batch": 4}}]
  (tmp_path / "smoke.json").write_text(json.dumps([row]))
  (tmp_path / "smoke_ablations.json").write_text(json.dumps(ablations))
  monkeypatch.setattr("sys.argv", ["omniglot_table.py", "render", "--table", str(tmp_path / "smoke.json")])
  table.main()
  out = capsys.readouterr().out
  assert "| vinyals | maml | 20w1s | inner_lr=2.0 | 87.29 ± 0.58 | 500 | 86.35 ± 0.63 after 750 | cpu |" in out
  assert "| vinyals | reptile | 5w1s | carry_mode=sequential, meta_batch=4 | 85.20 ± 0.63 | 250 | — | cpu |" in out
  assert (tmp_path / "smoke_ablations.png").stat().st_size > 0
  fig = table.plot_ablations([row], ablations, tmp_path / "ablations.png")
  panels = {ax.get_title(): {l.get_label(): l for l in ax.get_lines()} for ax in fig.axes}
  assert sorted(panels) == ["maml 20w1s (vinyals)", "reptile 5w1s (vinyals)"]
  maml = panels["maml 20w1s (vinyals)"]
  assert list(maml["protocol"].get_xdata()) == [250, 500, 750] and maml["protocol"].get_linestyle() == "-"
  assert list(maml["inner_lr=2.0"].get_ydata()) == pytest.approx([65, 75])
  assert maml["inner_lr=2.0"].get_linestyle() == "--" and list(maml["paper"].get_ydata()) == [95.8, 95.8]
  assert set(panels["reptile 5w1s (vinyals)"]) == {"carry_mode=sequential, meta_batch=4", "paper"}  # no table row
  matplotlib.pyplot.close(fig)
  (tmp_path / "smoke_ablations.png").unlink()
  (tmp_path / "smoke_ablations.json").write_text(json.dumps([{**a, "curve": []} for a in ablations]))
  table.main()  # rows without curves: the Markdown, no figure
  out = capsys.readouterr().out
  assert "| inner_lr=2.0 | 87.29 ± 0.58 |" in out and not (tmp_path / "smoke_ablations.png").exists()


def test_the_plot_gives_each_learner_one_colour_in_every_panel(tmp_path):
  curve = lambda *acc: [{"train_time_s": 60.0 * (i + 1), "accuracy": a} for i, a in enumerate(acc)]
  row = lambda algo, ways, shots, device="cpu", split="vinyals": dict(
      algo=algo, ways=ways, shots=shots, split=split, paper=None if split == "lake" else 98.0,
      machine={"device": device}, curve=curve(0.6, 0.8))
  rows = [row("relation", 5, 1), row("maml", 5, 1, "NVIDIA H100"), row("maml", 20, 5),
          {**row("maml", 20, 1), "trained_on": {"device": "NVIDIA H100"}},  # tested again on the CPU
          row("protonet", 20, 1, split="lake"), {**row("reptile", 5, 5), "curve": []}]
  fig = table.plot(rows, tmp_path / "table.png")
  lines = {ax.get_title(): {l.get_label(): (l.get_color(), l.get_linestyle()) for l in ax.get_lines()
                            if not l.get_label().startswith("_")} for ax in fig.axes}
  assert lines["5-way 1-shot"]["maml (vinyals)"][0] == lines["20-way 5-shot"]["maml (vinyals)"][0]
  assert lines["5-way 1-shot"]["maml (vinyals)"][1] == "--" and lines["20-way 5-shot"]["maml (vinyals)"][1] == "-"
  assert lines["5-way 1-shot"]["maml (vinyals)"][0] != lines["5-way 1-shot"]["relation (vinyals)"][0]
  assert lines["20-way 1-shot"]["protonet (lake)"][1] == ":" and lines["20-way 1-shot"]["maml (vinyals)"][1] == "--"
  assert lines["5-way 5-shot"] == {}  # a row without a curve of its own draws nothing
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      "maml", "protonet", "relation", "accelerator", "Lake split", "paper"]  # reptile has no curve here
  bars = [l for ax in fig.axes for l in ax.get_lines() if l.get_marker() == "_"]
  assert sorted(l.get_ydata()[0] for l in bars) == [98.0] * 4  # each Vinyals curve's paper number
  assert (tmp_path / "table.png").stat().st_size > 0
  matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("algo,ways,accuracy,ci95,paper,met", [
    ("protonet", 5, 98.70, 0.15, 98.8, True),   # within its CI below the paper
    ("protonet", 5, 98.60, 0.15, 98.8, False),  # outside it
    ("relation", 20, 99.30, 0.08, 99.1, True),  # above the paper
    ("maml", 5, 97.70, 0.27, 98.7, True),       # 1 point under at 5-way
    ("maml", 5, 97.69, 0.27, 98.7, False),
    ("reptile", 20, 86.43, 0.36, 89.43, True),  # 3 points under at 20-way
    ("matching", 20, 90.70, 0.24, 93.8, False),
    ("relation", 5, 98.55, 0.35, 98.9, True),   # its CI just reaches the paper (98.55 + 0.35 < 98.9 in floats)
    ("maml", 20, 60.31, 0.82, None, None),      # Lake's split: no paper number
])
def test_meets_target_follows_the_issues_rule_per_learner(algo, ways, accuracy, ci95, paper, met):
  row = dict(algo=algo, ways=ways, accuracy=accuracy, ci95=ci95, paper=paper)
  assert table.meets_target(row) is met


def test_each_learner_is_tested_with_its_papers_queries_and_curves_with_fifteen():
  assert [table.test_queries(algo, shots) for algo in ("maml", "fomaml", "relation") for shots in (1, 5)] == \
      [1, 5] * 3  # as MAML trains; as Relation's test scripts
  assert [table.test_queries("reptile", 1), table.test_queries("reptile", 5)] == [1, 1]
  assert {table.test_queries(algo, 5) for algo in ("protonet", "matching", "matching-fce")} == {15}
  args = table._cell_args(_ns(Path("/nonexistent"), algo="maml"), table.protocol("maml", 5, 5)[0])
  assert args.eval_queries == table.CURVE_QUERIES == 15


def test_a_test_draws_the_split_problems_test_tasks_with_the_papers_queries(tmp_path):
  drawn = []
  fields = dict.fromkeys(table.Problem._fields)
  problem = table.Problem(**{**fields, "eval_tasks": lambda key, n, queries=15: drawn.append((key, n, queries))})
  vinyals = table._on_split(problem, _ns(tmp_path), TrainArgs(dataset="omniglot"))
  assert vinyals is problem  # build's test tasks are the Vinyals split's
  table._with_queries(vinyals, 1).eval_tasks("key", 600)
  vinyals.eval_tasks("key", 100)
  assert drawn == [("key", 600, 1), ("key", 100, 15)]


def test_lakes_test_tasks_are_made_from_images_as_the_run_made_its_own(tmp_path, monkeypatch):
  asked = []

  def load(split, data_dir, **options):
    asked.append((split, options))
    return ImageClasses(np.zeros((20, 20, 28, 28), np.uint8), np.array([f"A{i % 2}/c{i}/rot000" for i in range(20)]))

  monkeypatch.setattr(table.omniglot, "load", load)
  fields = dict.fromkeys(table.Problem._fields)
  ns = _ns(tmp_path, split="lake", ways=5, shots=1)
  lake = table._on_split(table.Problem(**fields), ns, TrainArgs(dataset="omniglot", resample="nearest", invert=True))
  assert asked == [("evaluation", dict(rotations=False, resample="nearest", invert=True))]
  assert lake.eval_tasks(jax.random.PRNGKey(0), 2).x_support.shape == (2, 5, 28, 28, 1)


def test_a_cells_own_model_is_tested_again_only_in_place_of_a_row_of_that_model(tmp_path):
  ns = _ns(tmp_path, algo="fomaml", shots=1, model_shots=None)
  _save_source(argparse.Namespace(**{**vars(ns), "model_shots": 1}), eval_tasks=3)  # passes the settings check
  with pytest.raises(FileNotFoundError, match="data directory"):  # and stops only at loading its data
    table.test_cell(ns)
  rows, trained = ns.table, {"inner_lr": 0.4, "downsample": "stride"}
  assert table._training_machine(ns, 100, trained) == {}  # no row yet
  row = {"split": "vinyals", "algo": "fomaml", "ways": 5, "shots": 1, "meta_steps": 100, "machine": {"git": "a"},
         "protocol": trained}
  rows.write_text(json.dumps([row]))
  assert table._training_machine(ns, 100, trained) == {"trained_on": {"git": "a"}}
  rows.write_text(json.dumps([{**row, "trained_on": {"git": "b"}}]))
  assert table._training_machine(ns, 100, trained) == {"trained_on": {"git": "b"}}  # a row tested again keeps it
  for other, held in (({"meta_steps": 50}, "a model at meta-step 50"), ({"trained_by": "x_5w1s"}, "x_5w1s's model"),
                      ({"protocol": {"inner_lr": 0.4}},  # recorded before downsample joined the protocol
                       r"a model trained with other settings \(downsample: 'unset' -> 'stride'\)"),
                      ({"protocol": {**trained, "inner_lr": 0.1}},
                       r"a model trained with other settings \(inner_lr: 0.1 -> 0.4\)")):
    rows.write_text(json.dumps([{**row, **other}]))
    with pytest.raises(SystemExit, match=f"the table's vinyals_fomaml_5w1s row holds {held}, not this run's"):
      table._training_machine(ns, 100, trained)


def test_a_borrowed_model_names_the_machine_that_trained_it_when_the_table_knows(tmp_path):
  ns = _ns(tmp_path)  # reptile 5w5s, with the 5w1s cell's model
  rows, trained = ns.table, {"train_shots": 10}
  assert table._source_machine(ns, 100, trained) == {}
  row = {"split": "vinyals", "algo": "reptile", "ways": 5, "shots": 1, "meta_steps": 100, "machine": {"git": "a"},
         "protocol": trained}
  rows.write_text(json.dumps([row]))
  assert table._source_machine(ns, 100, trained) == {"trained_on": {"git": "a"}}
  rows.write_text(json.dumps([{**row, "trained_on": {"git": "gpu"}, "machine": {"git": "cpu"}}]))
  assert table._source_machine(ns, 100, trained) == {"trained_on": {"git": "gpu"}}
  assert table._source_machine(ns, 200, trained) == {}  # the row holds another model of that cell
  assert table._source_machine(ns, 100, {"train_shots": 1}) == {}  # ... or one trained otherwise


def test_a_run_directory_resumes_from_a_checkpoint_and_not_past_its_budget(tmp_path, monkeypatch):
  run = tmp_path / "vinyals_maml_5w1s"
  monkeypatch.setattr(table, "PARKED", tmp_path / "parked")
  assert table._check_resumable(run, None) is False  # a new cell
  (tmp_path / "parked").mkdir()
  (tmp_path / "parked" / "vinyals_maml_5w1s.tar.gz").write_bytes(b"")
  with pytest.raises(SystemExit, match=r"vinyals_maml_5w1s.tar.gz holds this cell's run: unpark it first"):
    table._check_resumable(run, None)  # on a new machine, the cell is parked
  (run / "checkpoints").mkdir(parents=True)
  (run / RUN_FILE).write_text("{}")
  with pytest.raises(SystemExit, match=r"holds a run with no checkpoint .*remove it \(rm -r "):
    table._check_resumable(run, None)
  (run / "checkpoints" / "40.unusable").mkdir()
  with pytest.raises(SystemExit, match="no checkpoint"):
    table._check_resumable(run, None)
  (run / "checkpoints" / "20").mkdir()
  (run / "metrics.jsonl").write_text(json.dumps({"step": 20, "time_s": 90.0}) + "\n")
  assert table._check_resumable(run, None) and table._check_resumable(run, 2)
  with pytest.raises(SystemExit, match=r"had trained 1.5 minutes .*\(meta-step 20\), past --budget-minutes 1.5"):
    table._check_resumable(run, 1.5)


@needs_shared
def test_a_parked_run_directory_unpacks_where_it_is_missing_and_restores_its_newest_state(tmp_path, monkeypatch):
  from metajax.harness.problem import build
  from metajax.harness.run import load_run, train
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  ns = _ns(tmp_path, algo="protonet", ways=5, shots=1, runs_dir=str(tmp_path / "runs"), set=None)
  run = tmp_path / "runs" / "vinyals_protonet_5w1s"
  args = TrainArgs(dataset="omniglot", data_dir=str(SHARED), algo="protonet", width=8, steps=6, chunk=2,
                   meta_batch=2, queries=2, eval_queries=2, train_split="background_small1",
                   eval_split="background_small2", out_dir=str(run))
  train(args, build(args))
  (run / "curve.jsonl").write_text('{"step": 6}\n')
  (run / "checkpoints" / "6" / "metajax_integrity.json").unlink()  # a park while step 6 was being written
  archive = table.park(ns)
  with tarfile.open(archive) as tar:
    names = {n.split("/", 2)[1] for n in tar.getnames() if n.count("/") >= 1}
    assert names == {RUN_FILE, "metrics.jsonl", "curve.jsonl", "checkpoints"}
    assert {n.split("/")[2] for n in tar.getnames() if n.count("/") >= 2} == {"4"}  # the newest intact only
  *_, trained = load_run(run, step=4)
  run.rename(tmp_path / "old")
  run.mkdir()  # an empty folder is as good as none
  assert table.unpark(ns) == run
  *_, unparked = load_run(run)
  assert int(unparked.step) == 4 and jax.tree.all(jax.tree.map(np.array_equal, trained, unparked))
  assert (run / "curve.jsonl").read_text() == '{"step": 6}\n' and not list(run.parent.glob(".*unpacking"))
  table.unpark(ns)  # as far as its archive: left as it is
  shutil.rmtree(run)
  (tmp_path / "old").rename(run)
  for step in ("6", "4"):  # leaves the run directory at step 2, behind the archive
    (run / "checkpoints" / step).rename(run / "checkpoints" / f"{step}.unusable")
  with pytest.raises(SystemExit, match=r"\(meta-step 2\) is behind its archive .* \(4\): .*\(rm -r "):
    table.unpark(ns)
  with pytest.raises(SystemExit, match=r"is at a later meta-step than .* \(2\); remove it to park this run"):
    table.park(ns)


def test_park_and_unpark_refuse_what_they_cannot_use_and_unpack_nothing_outside_the_cell(tmp_path, monkeypatch):
  ns = _ns(tmp_path, algo="maml", ways=5, shots=1, set=None, runs_dir=str(tmp_path / "runs"))
  with pytest.raises(SystemExit, match="no run to park: .*vinyals_maml_5w1s holds no run.json"):
    table.park(ns)
  with pytest.raises(SystemExit, match="no park archive of vinyals_maml_5w1s"):
    table.unpark(ns)
  parked = tmp_path / "parked"
  parked.mkdir()
  archive = parked / "vinyals_maml_5w1s.tar.gz"
  (tmp_path / "note").write_text("outside")
  monkeypatch.delattr(tarfile, "data_filter", raising=False)  # Python before 3.10.12 / 3.11.4: the checks alone
  for name, why in [("../note", "is not a file of a vinyals_maml_5w1s run directory"),
                    (".", "is not a file of a vinyals_maml_5w1s run directory"),
                    ("vinyals_maml_5w1s/run.json", "holds 0 checkpoints, not one")]:
    with tarfile.open(archive, "w:gz") as tar:
      tar.add(tmp_path / "note", arcname=name)
    with pytest.raises(SystemExit, match=why):
      table.unpark(ns)
  link = tarfile.TarInfo("vinyals_maml_5w1s/checkpoints/2/x")
  link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
  with tarfile.open(archive, "w:gz") as tar:
    tar.addfile(link)
  with pytest.raises(SystemExit, match="'vinyals_maml_5w1s/checkpoints/2/x' is not a file"):
    table.unpark(ns)
  archive.write_bytes(archive.read_bytes()[:40])  # cut short
  with pytest.raises(SystemExit, match="is not a readable park archive"):
    table.unpark(ns)
  assert not (tmp_path / "runs").exists() and (tmp_path / "note").read_text() == "outside"


def test_a_resumed_curve_goes_on_with_its_own_number_of_tasks():
  assert table._curve_tasks([], None) == 100 and table._curve_tasks([], 30) == 30
  recorded = [{"step": 200, "tasks": 50}, {"step": 400, "tasks": 50}]
  assert table._curve_tasks(recorded, None) == table._curve_tasks(recorded, 50) == 50
  with pytest.raises(SystemExit, match="--curve-tasks 100: the run's curve points are on 50 tasks each"):
    table._curve_tasks(recorded, 100)
  assert table._curve_tasks([{"step": 200}], 30) == 30  # points from before they recorded it


def test_merge_stores_another_copys_new_rows_once_and_refuses_what_would_lose_work(tmp_path, capsys):
  rows = tmp_path / "rows.json"
  row = lambda algo, acc, steps, git: {"split": "vinyals", "algo": algo, "ways": 5, "shots": 1, "accuracy": acc,
                                       "ci95": 0.1, "meta_steps": steps, "test_tasks": 600,
                                       "test_queries": table.test_queries(algo, 1),
                                       "machine": {"device": "H200", "git": git}}
  kept, old = row("protonet", 99.0, 10, "abc"), row("maml", 90.0, 10, "abc")
  rows.write_text(json.dumps([old, kept]))
  gpu = tmp_path / "gpu.json"
  merge = lambda git=None, force=False: table.merge(argparse.Namespace(file=str(gpu), git=git, force=force,
                                                                       table=rows))
  gpu.write_text(json.dumps([row("maml", 98.0, 20, ""), kept]))
  with pytest.raises(SystemExit, match="maml 5w1s row names no commit; pass --git"):
    merge()
  assert json.loads(rows.read_text()) == [old, kept]
  merge("def")
  merge("def")  # nothing new the second time
  out = capsys.readouterr().out
  assert out.count("merged vinyals maml 5w1s: 98.00 ± 0.10 after 20 meta-steps on H200, replacing 90.00") == 1
  assert "no row that rows.json lacks" in out
  stamped = {**row("maml", 98.0, 20, ""), "machine": {"device": "H200", "git": "def (its working tree)"}}
  assert json.loads(rows.read_text()) == [stamped, kept]
  # an older file's rows: one new cell, one trained less far than the table's; nothing is stored
  gpu.write_text(json.dumps([{**row("maml", 95.0, 10, "abc"), "shots": 5, "test_queries": 5}, row("maml", 97.0, 10, "abc")]))
  with pytest.raises(SystemExit, match=r"\(10 meta-steps\) would replace one trained to 20; nothing merged"):
    merge()
  assert json.loads(rows.read_text()) == [stamped, kept]
  merge(force=True)
  assert [r["accuracy"] for r in json.loads(rows.read_text())] == [97.0, 95.0, 99.0]
  gpu.write_text(json.dumps([{**kept, "ablation": {"width": 32}}]))
  with pytest.raises(SystemExit, match="holds ablation rows"):
    merge()
  # rows this script would not write, each beside a good new one that is not stored either
  good, new_cell = {**kept, "ways": 20, "shots": 5}, {**kept, "shots": 5}
  for bad, why in (({"ways": 10}, "protonet 10w5s row is no cell of the table"),
                   ({"algo": "anil"}, "anil 5w5s row is no cell"),
                   ({"test_tasks": 100}, "tested on 100 tasks of 15 queries, not 600\\+ of 15"),
                   ({"test_queries": 1}, "tested on 600 tasks of 1 queries, not 600\\+ of 15"),
                   ({"ways": 20}, "holds two vinyals protonet 20w5s rows")):
    gpu.write_text(json.dumps([good, {**new_cell, **bad}]))
    with pytest.raises(SystemExit, match=why):
      merge()
    assert len(json.loads(rows.read_text())) == 3


def test_merge_passes_over_a_copys_unchanged_rows_tested_before_the_protocols_queries(tmp_path):
  rows = tmp_path / "rows.json"
  legacy = {"split": "vinyals", "algo": "maml", "ways": 20, "shots": 5, "accuracy": 94.0, "ci95": 0.2,
            "meta_steps": 800, "test_tasks": 600, "test_queries": 15, "machine": {"device": "H100", "git": "a"}}
  rows.write_text(json.dumps([legacy]))
  new = {**legacy, "algo": "fomaml", "test_queries": 5, "machine": {"device": "H200", "git": "b"}}
  gpu = tmp_path / "gpu.json"
  gpu.write_text(json.dumps([legacy, new]))
  table.merge(argparse.Namespace(file=str(gpu), git=None, force=False, table=rows))
  assert json.loads(rows.read_text()) == [legacy, new]
  gpu.write_text(json.dumps([{**legacy, "meta_steps": 900}]))  # changed, and still tested with 15
  with pytest.raises(SystemExit, match="tested on 600 tasks of 15 queries, not 600\\+ of 5; nothing merged"):
    table.merge(argparse.Namespace(file=str(gpu), git=None, force=False, table=rows))


@needs_shared
@pytest.mark.parametrize("stop", ["wall time", "SIGINT"])
def test_a_wall_time_budget_or_sigint_stops_training_at_the_next_curve_point(stop, tmp_path, monkeypatch):
  from metajax.harness.problem import build
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  args = TrainArgs(dataset="omniglot", data_dir=str(SHARED), algo="protonet", width=8, steps=6, chunk=2,
                   meta_batch=2, queries=2, eval_queries=2, train_split="background_small1",
                   eval_split="background_small2", out_dir=str(tmp_path / "run"))
  points = []
  on_point = points.append if stop == "wall time" else lambda curve: (points.append(curve),
                                                                      os.kill(os.getpid(), signal.SIGINT))
  state, steps, _, curve = table.train_with_curve(args, build(args), curve_tasks=2, on_point=on_point,
                                                   wall_minutes=0 if stop == "wall time" else None)
  assert steps == int(state.step) == 2 and [(p["step"], p["tasks"]) for p in curve] == [(2, 2)] and len(points) == 1
