"""Run by tests/test_distributed.py in fresh processes (JAX's device setup is fixed at start).

  python tests/distributed_worker.py devices OUT.npz            # 8 host CPU devices, one process
  python tests/distributed_worker.py host PORT RANK OUT.npz     # one of two processes, CPU collectives

Writes the meta-parameters after the steps to ``OUT.npz``.
"""
from __future__ import annotations

import sys

import jax


def problem():
  """A MAML config, initial state and a fixed batch of 8 sinusoid tasks."""
  import optax

  from metajax import maml
  from metajax.data import sinusoid
  from tests.conftest import tiny_mlp

  key = jax.random.PRNGKey(0)
  params, apply_fn = tiny_mlp(key)
  config = maml.MAMLConfig(apply_fn, optimizer=optax.sgd(0.1), inner_steps=2, task_strategy="vmap")
  return config, maml.init(config, params, key), sinusoid.sample(jax.random.PRNGKey(1), 8, 5, 6)


def flat_params(state):
  import numpy as np
  leaves = jax.tree_util.tree_flatten_with_path(state.meta_params)[0]
  return {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}


def cli_losses():
  """``metajax train --devices all`` and ``--devices 1`` (same seed): their final eval losses."""
  from metajax.harness.args import TrainArgs
  from metajax.harness.run import run
  losses = {}
  for devices in ("all", "1"):
    args = TrainArgs(steps=4, chunk=2, meta_batch=8, eval_tasks=16, devices=devices)
    losses[f"cli_{devices}"] = run(args, log=lambda line: None)["eval_loss"]
  return losses


def main(argv):
  import numpy as np
  if argv[0] == "devices":
    jax.config.update("jax_num_cpu_devices", 8)
    out = argv[1]
  else:
    port, rank, out = argv[1], int(argv[2]), argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
  import functools

  from metajax import maml
  from metajax.core import distributed
  from metajax.data import sinusoid

  config, state, batch = problem()
  mesh = distributed.task_mesh("all")
  assert mesh.size == (8 if argv[0] == "devices" else 2), mesh
  state = distributed.replicate(state, mesh)
  if argv[0] == "host":  # each process holds its half of the task batch
    half = 8 // 2
    batch = jax.tree.map(lambda x: np.asarray(x)[rank * half:(rank + 1) * half], batch)
  sharded = distributed.shard_tasks(batch, mesh)
  assert len(sharded.x_support.sharding.device_set) == mesh.size
  for _ in range(2):
    state, _ = maml.meta_step(state, sharded, config=config)
  result = flat_params(state)
  if argv[0] == "devices":  # fused steps with batches drawn on device, sharded inside jit
    sample = functools.partial(sinusoid.sample, num_tasks=8, shots=5, queries=6)
    fused, _ = maml.train_steps(state, config=config, sample_fn=sample, num_steps=3, mesh=mesh)
    result.update({"fused" + k: v for k, v in flat_params(fused).items()})
    result.update(cli_losses())
  if argv[0] == "devices" or rank == 0:
    np.savez(out, **result)


if __name__ == "__main__":
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  main(sys.argv[1:])
