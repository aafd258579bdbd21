"""The one check of the positive integer settings (steps, shots, widths, ...) used across metajax."""
from __future__ import annotations

from typing import Any

import numpy as np


def check_positive_int(value: Any, name: str) -> None:
  """Raises ``ValueError("<name> must be a positive integer, got <value>")`` unless ``value`` is an
  int (a NumPy integer counts, a bool does not) that is at least 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
