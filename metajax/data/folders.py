"""Class-folder image sets: listing class folders, reading split files, and decoding
``{class name: image files}`` into cached :class:`ImageClasses`.

Shared by the mini-ImageNet, CIFAR-FS/FC100, tiered-ImageNet and CUB loaders.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Collection, Literal, Mapping, Optional, Sequence, get_args

import numpy as np

from metajax.data import images as imgs
from metajax.data.images import ImageClasses

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


def subfolders(parent: Path) -> list[str]:
  """Sorted names of the folders in ``parent``."""
  return sorted(p.name for p in parent.iterdir() if p.is_dir())


def image_files(folder: Path) -> list[Path]:
  """Sorted image files of one class folder (non-image files skipped).

  Raises:
    ValueError: naming the folder when it holds no image file.
  """
  files = sorted(f for f in folder.iterdir() if f.is_file() and imgs.is_image_name(f.name))
  if not files:
    raise ValueError(f"{folder}: class folder holds no image files")
  return files


def read_names(path: Path) -> list[str]:
  """The non-blank lines of a split file, stripped: one class name each.

  Raises:
    ValueError: an empty file, or a name listed twice.
  """
  names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not names:
    raise ValueError(f"{path}: split file lists no classes")
  twice = sorted(n for n, k in Counter(names).items() if k > 1)
  if twice:
    raise ValueError(f"{path}: class(es) listed more than once: {_some(twice)}")
  return names


def _some(names: Sequence[str]) -> str:
  return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_known(names: Sequence[str], known: Collection[str], source: str | os.PathLike) -> None:
  """Raises ``ValueError`` naming ``source`` (where ``names`` were read) and the names not ``known``."""
  known = set(known)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"{source}: unknown class name(s) {_some(unknown)}")


def class_files(parent: Path, names: Sequence[str], what: str) -> dict[str, list[Path]]:
  """``{name: image_files(parent / name)}`` for the ``names`` given, in their order.

  Raises:
    FileNotFoundError: naming ``parent``, ``what`` and the class folders missing.
  """
  missing = [n for n in names if not (parent / n).is_dir()]
  if missing:
    raise FileNotFoundError(f"{parent}: {len(missing)} class folder(s) of {what} missing: {_some(missing)}")
  return {n: image_files(parent / n) for n in names}


def pad_stack(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Stacks per-class ``(n_c, …)`` arrays into ``(classes, max n_c, …)``, zero-padded.

  Returns:
    ``(images, counts)`` as :class:`ImageClasses` holds them (``counts`` ``None`` when all are full).
  """
  counts = np.array([len(a) for a in arrays], np.int32)
  out = np.zeros((len(arrays), int(counts.max()), *arrays[0].shape[1:]), arrays[0].dtype)
  for i, a in enumerate(arrays):
    out[i, : len(a)] = a
  return out, ragged_counts(counts)


def ragged_counts(counts: np.ndarray) -> Optional[np.ndarray]:
  """``counts`` as int32, or ``None`` when every class holds the largest count (no padding)."""
  return None if (counts == counts.max()).all() else counts.astype(np.int32)


def from_arrays(arrays: Mapping[str, np.ndarray]) -> ImageClasses:
  """Cached ``{"images", "names"[, "counts"]}`` arrays as :class:`ImageClasses`."""
  return ImageClasses(arrays["images"], arrays["names"], arrays.get("counts"))


def to_arrays(classes: ImageClasses) -> dict[str, np.ndarray]:
  """The inverse of :func:`from_arrays`, for :func:`metajax.data.images.cached`."""
  out = {"images": classes.images, "names": classes.names}
  return out if classes.counts is None else {**out, "counts": classes.counts}


def load_classes(classes: Mapping[str, Sequence[Path]], what: str, *, image_size: int,
                 examples_per_class: Optional[int] = None, ragged: bool = False,
                 cache_prefix: str, cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Decodes ``{class name: image files}`` to RGB ``ImageClasses`` of ``image_size``², cached.

  Args:
    classes: the image files of each class, in order (files in the order kept).
    what: the set, for errors (e.g. ``"mini-ImageNet train"``).
    examples_per_class: with ``ragged=False``, every class must hold the same number of
      files unless this is given, then the first that many of each are kept (fewer is an
      error); with ``ragged=True``, a cap: each class keeps its first
      ``min(files, examples_per_class)`` and the images are padded to the largest class
      (``counts`` says how many are real).
    cache_prefix: file name prefix of the cache; the key digests every kept file's
      path, size and modification time, so a changed file or split is a new entry.

  Raises:
    ValueError: unequal classes (``ragged=False`` without ``examples_per_class``), or a
      class smaller than ``examples_per_class`` (``ragged=False``).
    metajax.data.images.ImageError: an image that cannot be decoded.
  """
  if not classes:
    raise ValueError(f"{what}: no classes")
  sizes = {name: len(files) for name, files in classes.items()}
  if not ragged:
    if examples_per_class is None and len(set(sizes.values())) > 1:
      small = min(sizes, key=sizes.get)
      raise ValueError(f"{what}: classes hold different numbers of images (e.g. {small}: {sizes[small]}, "
                       f"max {max(sizes.values())}); pass examples_per_class to use the first N of each")
    short = [n for n, c in sizes.items() if examples_per_class is not None and c < examples_per_class]
    if short:
      raise ValueError(f"{what}: class {short[0]} has {sizes[short[0]]} images, fewer than "
                       f"examples_per_class={examples_per_class}")
  kept = {name: list(files[:examples_per_class]) for name, files in classes.items()}
  digest = hashlib.sha256()
  for name, files in kept.items():
    digest.update(f"{name}\0".encode())
    for f in files:
      st = os.stat(f)
      digest.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())

  def build() -> dict[str, np.ndarray]:  # decoded straight into the padded array: one copy in memory
    counts = np.array([len(files) for files in kept.values()], np.int32)
    out = np.zeros((len(kept), int(counts.max()), image_size, image_size, 3), np.uint8)
    for i, files in enumerate(kept.values()):
      for j, f in enumerate(files):
        out[i, j] = imgs.decode(f.read_bytes(), str(f), (image_size, image_size), "RGB")
    return to_arrays(ImageClasses(out, np.array(list(kept)), ragged_counts(counts)))

  key = {"files": digest.hexdigest(), "size": image_size, "version": 1}
  return from_arrays(imgs.cached(imgs.cache_dir(cache_dir), cache_prefix, key, build))
