"""Orbax checkpoints of a :class:`~metajax.core.MetaState`: written atomically, the last few
kept, each with an integrity record (SHA-256 of every file and the run's fingerprint)
that is verified before anything is restored; and the one-line errors a user sees when a
checkpoint does not fit."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from metajax.core import MetaState

RECORD = "metajax_integrity.json"


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be used: corrupt, foreign, unreadable, or of another shape."""


def manager(directory: Path, max_to_keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous Orbax manager over ``directory`` keeping the last ``max_to_keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> Path:
  return Path(mngr.directory) / str(step)


def _digests(step_dir: Path) -> dict[str, str]:
  """SHA-256 of every file under ``step_dir`` (but the record), by relative path."""
  out = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and path.name != RECORD:
      out[path.relative_to(step_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def save(mngr: ocp.CheckpointManager, state: MetaState, fingerprint: str = "") -> int:
  """Saves ``state`` under its step number (atomic: written aside, then renamed), then its
  integrity record (also written aside and renamed); returns the step.

  ``fingerprint`` identifies the run (e.g. a hash of its settings); restoring checks it.
  """
  step = int(state.step)
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  step_dir = _step_dir(mngr, step)
  record = {"step": step, "fingerprint": fingerprint, "files": _digests(step_dir)}
  partial = step_dir / (RECORD + ".partial")
  partial.write_text(json.dumps(record, indent=1))
  os.replace(partial, step_dir / RECORD)
  return step


def verify(mngr: ocp.CheckpointManager, step: int, fingerprint: str = "") -> None:
  """Raises :class:`CheckpointError` (one line naming the checkpoint and the file) unless every
  file of checkpoint ``step`` matches its integrity record and the record's run is ``fingerprint``'s."""
  step_dir = _step_dir(mngr, step)
  fail = lambda why: CheckpointError(f"checkpoint {step_dir} cannot be restored: {why}")
  try:
    record = json.loads((step_dir / RECORD).read_text())
    files = dict(record["files"])
  except FileNotFoundError:
    raise fail(f"it has no integrity record {RECORD} (not written by metajax, or cut short)") from None
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
    raise fail(f"its integrity record {RECORD} is damaged ({type(err).__name__})") from None
  if record.get("fingerprint") != fingerprint:
    raise fail("it was written by a run with other settings (its fingerprint differs from this run.json's); "
               "it cannot be restored into this model")
  actual = _digests(step_dir)
  for name, digest in files.items():
    if name not in actual:
      raise fail(f"file {name} is missing")
    if actual[name] != digest:
      raise fail(f"file {name} does not match its SHA-256 digest (corrupted or overwritten)")


def restore(mngr: ocp.CheckpointManager, template: MetaState, step: Optional[int] = None,
            fingerprint: str = "") -> MetaState:
  """Verifies (:func:`verify`) and restores the checkpoint at ``step`` (default: latest) into the
  structure of ``template``.

  Raises:
    CheckpointError: no checkpoint, a failed verification, unreadable files, or arrays
      whose shapes differ from ``template``'s (e.g. a changed model width).
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint found in {mngr.directory}")
  if step not in mngr.all_steps():
    raise CheckpointError(f"no checkpoint at step {step} in {mngr.directory}; it keeps steps "
                          f"{sorted(mngr.all_steps())}")
  verify(mngr, step, fingerprint)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as err:  # orbax raises many types for bad files; name the folder
    detail = " ".join(str(err).split())[:300]
    raise CheckpointError(f"checkpoint {mngr.directory}/{step} cannot be restored into this "
                          f"model: {type(err).__name__}: {detail}") from err
  for want, got in zip(jax.tree.leaves(template), jax.tree.leaves(restored)):
    if np.shape(want) != np.shape(got):
      raise CheckpointError(f"checkpoint {mngr.directory}/{step} holds an array of shape "
                            f"{np.shape(got)} where the model has {np.shape(want)}")
  return MetaState(*restored)


def restore_newest_intact(mngr: ocp.CheckpointManager, template: MetaState, fingerprint: str,
                          log: Callable[[str], None]) -> MetaState:
  """The newest checkpoint that verifies and restores. Newer ones that do not are renamed
  ``<step>.unusable`` (kept for inspection, out of Orbax's way) and ``log`` says so."""
  if not mngr.all_steps():
    raise CheckpointError(f"no checkpoint found in {mngr.directory}")
  errors = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = restore(mngr, template, step, fingerprint)
    except CheckpointError as err:
      errors.append(str(err))
      continue
    for skipped in sorted(s for s in mngr.all_steps() if s > step):
      _step_dir(mngr, skipped).rename(_step_dir(mngr, skipped).with_name(f"{skipped}.unusable"))
    mngr.reload()
    for error in errors:
      log(f"{error}; resuming from checkpoint {step} instead")
    return state
  raise CheckpointError(errors[0] if len(errors) == 1 else
                        f"no intact checkpoint in {mngr.directory} ({len(errors)} tried): {errors[0]}")
