"""tiered-ImageNet (Ren et al., 2018, "Meta-learning for semi-supervised few-shot
classification"): 608 ImageNet classes grouped by 34 high-level categories, split by
category, 351 / 97 / 160 classes from 20 / 6 / 8 categories, 732–1300 images each.

Two layouts are read, from ``data_dir`` or ``$METAJAX_DATA`` (directly, or in a
``tiered-imagenet/``, ``tiered_imagenet/`` or ``tieredImageNet/`` subfolder):

* split folders ``<root>/<split>/<synset>/*.jpg`` (as written by tiered-imagenet-tools, or
  mini-ImageNet's folder layout);
* an ImageNet-style folder of synset folders ``<root>/<synset>/*.JPEG`` with the standard
  split files ``<root>/<split>.csv``, one ``synset,category`` line per class (no header), as
  in ``tiered_imagenet_split/`` of Ren et al.'s code and of tiered-imagenet-tools.

When ``<root>/<split>.csv`` is present the class names are ``"<category>/<synset>"`` and
:func:`category_ids` gives each class's category (for within-category episodes); else they
are the synsets. Classes keep all their images (``counts`` says how many, the rest padding)
unless ``examples_per_class`` caps them: the full training split is ~450k images,
about 9.6 GB as 84×84 uint8 arrays.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

import numpy as np

from metajax.data import folders
from metajax.data.folders import Split
from metajax.data.images import ImageClasses, resolve_data_dir

SUBFOLDERS = ("tiered-imagenet", "tiered_imagenet", "tieredImageNet", "tieredimagenet")


def read_split_csv(path: Path) -> dict[str, str]:
  """``{synset: category}`` from a ``synset,category`` split file.

  Raises:
    ValueError: naming the file and line of a row that is not two non-empty fields, or a
      synset listed twice.
  """
  table: dict[str, str] = {}
  with open(path, newline="") as f:
    for number, row in enumerate(csv.reader(f), 1):
      if not row or not "".join(row).strip():
        continue
      if len(row) != 2 or not all(field.strip() for field in row):
        raise ValueError(f"{path}, line {number}: expected 'synset,category', got {','.join(row)!r}")
      synset, category = (field.strip() for field in row)
      if synset in table:
        raise ValueError(f"{path}, line {number}: synset {synset} listed twice")
      table[synset] = category
  if not table:
    raise ValueError(f"{path}: split file lists no classes")
  return table


def category_ids(classes: ImageClasses) -> np.ndarray:
  """``(classes,)`` int32 index of each class's category (names ``<category>/<synset>``), for
  ``episodes.sample(groups=...)``.

  Raises:
    ValueError: names without a category (loaded without the split CSV).
  """
  if not all("/" in name for name in classes.names):
    raise ValueError("class names carry no category (<category>/<synset>); put the split CSV beside the data")
  return np.unique([name.split("/")[0] for name in classes.names], return_inverse=True)[1].astype(np.int32)


def load(split: Split = "train", data_dir: Optional[str | os.PathLike] = None, *,
         image_size: int = 84, examples_per_class: Optional[int] = None,
         cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Loads a split: ``images (classes, max images, s, s, 3)`` uint8 with ``counts``, synsets sorted.

  Args:
    split: ``"train"``, ``"val"`` or ``"test"``.
    data_dir: the folder holding one of the layouts (default ``$METAJAX_DATA``).
    image_size: side of the square output images.
    examples_per_class: keep at most the first this many images of each class (by file name).
    cache_dir: where decoded arrays are cached (default ``$METAJAX_CACHE`` or ``~/.cache/metajax``).

  Raises:
    FileNotFoundError: no data folder, neither the split folder nor the split CSV, a
      synset folder the CSV lists.
    ValueError: a malformed CSV, a split folder whose synsets differ from its CSV's, an
      empty class folder.
    metajax.data.images.ImageError: an image that cannot be decoded.
  """
  if split not in folders.SPLITS:
    raise ValueError(f"unknown tiered-ImageNet split {split!r}; choose one of {folders.SPLITS}")
  root = resolve_data_dir(data_dir, SUBFOLDERS)
  folder, table = root / split, root / f"{split}.csv"
  what = f"tiered-ImageNet {split}"
  categories = read_split_csv(table) if table.is_file() else None
  if folder.is_dir():
    synsets = folders.subfolders(folder)
    if categories is not None and set(synsets) != set(categories):
      differ = sorted(set(synsets) ^ set(categories))
      raise ValueError(f"{folder}: its synset folders differ from {table}'s classes, e.g. {', '.join(differ[:5])} "
                       "(for ImageNet's own train folder, put the split CSVs in it and pass it as the data folder)")
    classes = folders.class_files(folder, synsets, what)
  elif categories is not None:
    classes = folders.class_files(root, sorted(categories), what)
  else:
    raise FileNotFoundError(f"tiered-ImageNet: neither {folder}/ nor {table} exists")
  data = folders.load_classes(classes, what, image_size=image_size, examples_per_class=examples_per_class,
                              ragged=True, cache_prefix=f"tiered-imagenet-{split}", cache_dir=cache_dir)
  if categories is None:
    return data
  return data._replace(names=np.array([f"{categories[s]}/{s}" for s in data.names.tolist()]))
