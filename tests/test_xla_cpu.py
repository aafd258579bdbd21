"""The documented XLA:CPU setting: applied before JAX starts, never silently too late."""
from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from metajax.core import xla_cpu


def test_applied_before_jax_starts_in_a_fresh_process():
  code = ("import os; from metajax.core.xla_cpu import use_fast_cpu_convolutions as use; "
          "ok = use(); import jax; jax.numpy.ones(1); print(ok, os.environ['XLA_FLAGS'])")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
  assert out.stdout.split() == ["True", xla_cpu.FLAG]


def test_too_late_warns_and_says_so(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  jnp.ones(1)  # JAX has started in this process
  with pytest.warns(UserWarning, match="already initialised"):
    assert not xla_cpu.use_fast_cpu_convolutions()
  assert "XLA_FLAGS" not in os.environ


def test_an_explicit_choice_in_xla_flags_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")
  assert not xla_cpu.use_fast_cpu_convolutions()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"


def test_importing_the_cli_starts_no_backend_so_its_flag_applies():
  code = "import metajax.harness.cli; from jax._src import xla_bridge; print(xla_bridge.backends_are_initialized())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
