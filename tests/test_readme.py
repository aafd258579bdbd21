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
  assert set(scope["metrics"]) == {"objective", "loss", "support_loss"}
  assert scope["prediction"].shape == (10, 1) and scope["per_task"]["loss"].shape == (25,)
  exec(compile(new_learner, "README:add-a-learner", "exec"), {})
  learner, params = REGISTRY["soft-nn"].build(Setup(x_shape=(4,), ways=3), jax.random.PRNGKey(0))
  centres = jax.random.normal(jax.random.PRNGKey(1), (3, 4)) * 3
  labels = np.arange(6) % 3
  x = centres[labels] + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (6, 4))
  from metajax.core import Task
  batch = jax.tree.map(lambda a: a[None], Task(x, labels, x, labels))
  state, metrics = jax.jit(learner.meta_step)(learner.init(jax.random.PRNGKey(3), params), batch)
  assert int(state.step) == 1 and set(metrics) == {"loss", "accuracy", "objective"}
  assert float(learner.evaluate(state, batch)["accuracy"][0]) == 1.0


def test_api_screen_runs():
  (block,) = _blocks("The API in one screen")
  scope: dict = {}
  exec(compile(block, "README:api", "exec"), scope)
  assert set(scope["per_task"]) == {"loss", "loss_before", "support_loss"}
  assert scope["per_task"]["loss"].shape == (1000,)
  assert float(scope["per_task"]["loss"].mean()) < float(scope["per_task"]["loss_before"].mean())
