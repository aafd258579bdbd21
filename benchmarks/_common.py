"""Helpers shared by the benchmark scripts: environment facts and JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

from metajax.core.xla_cpu import use_fast_cpu_convolutions

use_fast_cpu_convolutions()  # the library's documented CPU setting, as the CLI applies it
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
  """Backend, device, CPU model, core count and package versions."""
  cpu = platform.processor()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import flax
  import optax
  return {
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "flax": flax.__version__, "optax": optax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip(),
  }


def run_json_lines(cmd: list[str]) -> list[dict]:
  """Runs ``cmd`` and returns the JSON objects it printed one per line (none if it failed)."""
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    print(f"FAILED: {' '.join(cmd)}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return []
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def save(name: str, payload: dict) -> Path:
  """Writes ``benchmarks/results/<name>.json`` and returns its path."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps(payload, indent=2))
  return path
