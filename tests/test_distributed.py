"""Task batches sharded over devices (8 forced host devices) and over two processes
(jax.distributed on 127.0.0.1, CPU collectives) give the single-device numbers."""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from metajax import maml
from metajax.core import distributed
from metajax.data import sinusoid
from tests.distributed_worker import flat_params, problem

WORKER = Path(__file__).with_name("distributed_worker.py")


def _reference(steps: int = 2):
  config, state, batch = problem()
  for _ in range(steps):
    state, _ = maml.meta_step(state, batch, config=config)
  return config, state


def _run(*args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(WORKER.parents[1])}
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out


def test_sharded_over_8_devices_equals_one_device(tmp_path):
  _check(_run("devices", tmp_path / "out.npz"))
  got = dict(np.load(tmp_path / "out.npz"))
  config, state = _reference()
  want = flat_params(state)
  chex.assert_trees_all_close({k: got[k] for k in want}, want, rtol=1e-5, atol=1e-6)
  sample = functools.partial(sinusoid.sample, num_tasks=8, shots=5, queries=6)
  fused, _ = maml.train_steps(state, config=config, sample_fn=sample, num_steps=3)
  chex.assert_trees_all_close({k: got["fused" + k] for k in want}, flat_params(fused), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["cli_all"], got["cli_1"], rtol=1e-5)  # metajax train --devices all


def test_two_processes_each_with_half_the_tasks_equal_one_process(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [_run("host", port, rank, tmp_path / "out.npz") for rank in (0, 1)]
  for proc in procs:
    _check(proc)
  got = dict(np.load(tmp_path / "out.npz"))
  want = flat_params(_reference()[1])
  chex.assert_trees_all_close({k: got[k] for k in want}, want, rtol=1e-5, atol=1e-6)


def test_bad_device_requests_are_named():
  with pytest.raises(ValueError, match="device\\(s\\) are available"):
    distributed.task_mesh(jax.device_count() + 1)
  with pytest.raises(ValueError, match="'all', a positive int"):
    distributed.task_mesh("some")
  mesh = distributed.task_mesh(1)
  distributed.check_divisible(3, mesh)  # one device takes any batch
