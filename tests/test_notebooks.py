"""Every notebook's code cells run top to bottom at small size (METAJAX_SMALL=1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("METAJAX_SMALL", "1")
  cells = json.loads(path.read_text())["cells"]
  namespace: dict = {"__name__": "__notebook__"}
  for i, cell in enumerate(cells):
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
