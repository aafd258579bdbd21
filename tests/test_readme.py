"""The README's protocol section runs as written, and its example learner passes the protocol."""
from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from metajax.learners import REGISTRY, Setup

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(section: str) -> list[str]:
  text = README.read_text()
  start = text.index(f"## {section}")
  end = text.index("\n## ", start + 1)
  return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.fixture
def registry_restored():
  before = dict(REGISTRY)
  yield
  REGISTRY.clear()
  REGISTRY.update(before)


def test_protocol_section_runs(registry_restored):
  usage, new_learner = _blocks("One protocol for every learner")
  scope: dict = {}
  exec(compile(usage, "README:protocol", "exec"), scope)
  assert set(scope["metrics"]) == {"objective", "loss", "support_loss", "grad_norm"}
  assert scope["prediction"].shape == (10, 1) and scope["per_task"]["loss"].shape == (25,)
  exec(compile(new_learner, "README:add-a-learner", "exec"), {})
  learner, params = REGISTRY["soft-nn"].build(Setup(x_shape=(4,), ways=3), jax.random.PRNGKey(0))
  centres = jax.random.normal(jax.random.PRNGKey(1), (3, 4)) * 3
  labels = np.arange(6) % 3
  x = centres[labels] + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (6, 4))
  from metajax.core import Task
  batch = jax.tree.map(lambda a: a[None], Task(x, labels, x, labels))
  state, metrics = jax.jit(learner.meta_step)(learner.init(jax.random.PRNGKey(3), params), batch)
  assert int(state.step) == 1 and set(metrics) == {"loss", "accuracy", "objective", "grad_norm"}
  assert float(learner.evaluate(state, batch)["accuracy"][0]) == 1.0


def test_api_screen_runs():
  (block,) = _blocks("The API in one screen")
  scope: dict = {}
  exec(compile(block, "README:api", "exec"), scope)
  assert set(scope["per_task"]) == {"loss", "loss_before", "support_loss"}
  assert scope["per_task"]["loss"].shape == (1000,)
  assert float(scope["per_task"]["loss"].mean()) < float(scope["per_task"]["loss_before"].mean())


def test_many_devices_section_runs():
  (block,) = _blocks("Many devices and many hosts")
  scope: dict = {}
  exec(compile(block, "README:distributed", "exec"), scope)
  assert int(scope["state"].step) == 101
  assert scope["metrics"]["loss"].shape == (100,) and np.isfinite(scope["metrics"]["loss"]).all()


def test_image_data_section_runs(tmp_path, monkeypatch):
  from tests.test_data import SHARED
  if not (SHARED / "omniglot").is_dir():
    pytest.skip(f"needs Omniglot under {SHARED} (set METAJAX_TEST_DATA)")
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path))
  (block,) = _blocks("Few-shot image data")
  assert '"/path/to/data"' in block
  scope: dict = {}
  exec(compile(block.replace('"/path/to/data"', repr(str(SHARED))), "README:data", "exec"), scope)
  assert scope["train"].images.shape == (4800, 20, 28, 28) and scope["test"].images.shape == (1692, 20, 28, 28)
  assert scope["lake"].images.shape == (659, 20, 28, 28)
  assert scope["tasks"].x_support.shape == (32, 5, 28, 28, 1) and scope["tasks"].x_query.shape == (32, 75, 28, 28, 1)
  assert scope["lake_tasks"].x_support.shape == (8, 20, 28, 28, 1)
  alphabet = scope["omniglot"].alphabet_ids(scope["lake"])
  assert alphabet.shape == (659,) and len(np.unique(alphabet)) == 20


def test_every_python_block_of_the_readme_is_executed_above():
  executed = {"The API in one screen": 1, "One protocol for every learner": 2, "Many devices and many hosts": 1,
              "Few-shot image data": 1}
  assert all(len(_blocks(section)) == n for section, n in executed.items())
  assert README.read_text().count("```python") == sum(executed.values())
