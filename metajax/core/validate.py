"""The checks of numeric settings (steps, shots, widths, learning rates, ...) used across metajax."""
from __future__ import annotations

from typing import Any

import math

import numpy as np


def check_positive_int(value: Any, name: str) -> None:
  """Raises ``ValueError("<name> must be a positive integer, got <value>")`` unless ``value`` is an
  int (a NumPy integer counts, a bool does not) that is at least 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_nonnegative_int(value: Any, name: str) -> None:
  """As :func:`check_positive_int`, for integers that may be 0 ("a non-negative integer")."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def check_finite_number(value: Any, name: str, *, positive: bool = False) -> None:
  """Raises ``ValueError("<name> must be a finite number >= 0 (> 0 with positive), got <value>")``
  unless ``value`` is a real number (not a bool) in that range."""
  ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value) and (value > 0 if positive else value >= 0))
  if not ok:
    raise ValueError(f"{name} must be a {'positive finite number' if positive else 'finite number >= 0'}, "
                     f"got {value!r}")
