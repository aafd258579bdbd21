"""mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle split) as uint8 arrays.

Two common layouts are read, from the ``data_dir`` argument or ``$METAJAX_DATA``
(directly, or in a ``mini-imagenet/``, ``mini_imagenet/`` or ``miniImageNet/``
subfolder):

* split folders: ``<root>/<split>/<class>/<image>.jpg``;
* CSV split files: ``<root>/<split>.csv`` with a ``filename,label`` header and
  the images in ``<root>/images/<filename>``.

Images are decoded with Pillow to RGB, resized (default 84×84) and cached like
Omniglot's. Nothing is unpickled and nothing is downloaded. Every class must hold
the same number of images (600 in the real data set) unless
``examples_per_class`` is given, which keeps the first that many of each class
(sorted by file name).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from metajax.data import folders
from metajax.data.folders import Split
from metajax.data.images import ImageClasses, resolve_data_dir

SPLITS = folders.SPLITS
SUBFOLDERS = ("mini-imagenet", "mini_imagenet", "miniImageNet", "miniimagenet")


def _class_files(root: Path, split: Split) -> dict[str, list[Path]]:
  folder, table = root / split, root / f"{split}.csv"
  classes: dict[str, list[Path]] = {}
  if folder.is_dir():
    classes = {name: folders.image_files(folder / name) for name in folders.subfolders(folder)}
  elif table.is_file():
    with open(table, newline="") as f:
      reader = csv.DictReader(f)
      if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
        raise ValueError(f"{table}: expected a header with 'filename' and 'label' columns, "
                         f"got {reader.fieldnames}")
      for row in reader:
        classes.setdefault(row["label"], []).append(root / "images" / row["filename"])
    missing = [p for files in classes.values() for p in files if not p.is_file()]
    if missing:
      raise FileNotFoundError(f"{table}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    classes = {k: sorted(v) for k, v in sorted(classes.items())}
  else:
    raise FileNotFoundError(f"mini-ImageNet: neither {folder}/ nor {table} exists")
  if not classes:
    raise ValueError(f"mini-ImageNet: split {split!r} under {root} has no classes")
  return classes


def load(split: Split = "train", data_dir: Optional[str | os.PathLike] = None, *,
         image_size: int = 84, examples_per_class: Optional[int] = None,
         cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Loads a split as ``ImageClasses`` with ``images (classes, examples, s, s, 3)`` uint8.

  Raises:
    FileNotFoundError: no data folder, split folder / CSV, or a listed image.
    ValueError: unequal class sizes (without ``examples_per_class``), an empty class.
    metajax.data.images.ImageError: an image that cannot be decoded.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown mini-ImageNet split {split!r}; choose one of {SPLITS}")
  classes = _class_files(resolve_data_dir(data_dir, SUBFOLDERS), split)
  return folders.load_classes(classes, f"mini-ImageNet {split}", image_size=image_size,
                              examples_per_class=examples_per_class, cache_prefix=f"mini-imagenet-{split}",
                              cache_dir=cache_dir)
