"""Orbax checkpoints of a :class:`~metajax.core.MetaState` (written atomically,
the last few kept), and the errors a user sees when a checkpoint does not fit."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from metajax.core import MetaState


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be used: unreadable, foreign, or of another shape."""


def manager(directory: Path, max_to_keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous Orbax manager over ``directory`` keeping the last ``max_to_keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save(mngr: ocp.CheckpointManager, state: MetaState) -> int:
  """Saves ``state`` under its step number (atomic: written aside, then renamed); returns the step."""
  step = int(state.step)
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  return step


def restore(mngr: ocp.CheckpointManager, template: MetaState,
            step: Optional[int] = None) -> MetaState:
  """Restores the checkpoint at ``step`` (default: latest) into the structure of ``template``.

  Raises:
    CheckpointError: no checkpoint, unreadable files, or arrays whose shapes
      differ from ``template``'s (e.g. a changed model width).
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint found in {mngr.directory}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as err:  # orbax raises many types for bad files; name the folder
    raise CheckpointError(f"checkpoint {mngr.directory}/{step} cannot be restored into this "
                          f"model: {type(err).__name__}: {str(err)[:300]}") from err
  for want, got in zip(jax.tree.leaves(template), jax.tree.leaves(restored)):
    if np.shape(want) != np.shape(got):
      raise CheckpointError(f"checkpoint {mngr.directory}/{step} holds an array of shape "
                            f"{np.shape(got)} where the model has {np.shape(want)}")
  return MetaState(*restored)
