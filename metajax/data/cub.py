"""CUB-200-2011 (Wah et al., 2011, "The Caltech-UCSD Birds-200-2011 Dataset"): 200 bird
species, 41–60 images each, as a few-shot benchmark.

Layout, from ``data_dir`` or ``$METAJAX_DATA``: ``<root>/CUB_200_2011/images/<NNN.Class_name>/*.jpg``
(the release's tarball unpacked) or ``<root>/images/<NNN.Class_name>/*.jpg``.

Split: Chen et al. (2019, "A Closer Look at Few-shot Classification", ``write_CUB_filelist.py``):
over the 200 class folders sorted by name, index ``i`` goes to train when ``i % 2 == 0``
(100 classes), to val when ``i % 4 == 1`` (50) and to test when ``i % 4 == 3`` (50). The
index is read from the folder's ``NNN.`` prefix (``i = NNN - 1``), so a missing folder
moves no other class to another split. Split files ``splits/{train,val,test}.txt`` (one
class folder name a line, all three, disjoint), beside ``images/`` or in ``<root>``, replace
this split when present.

Classes keep all their images (``counts`` says how many, the rest padding) unless
``examples_per_class`` caps them; images are resized to ``image_size``² (not cropped).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from metajax.data import folders
from metajax.data.folders import Split
from metajax.data.images import ImageClasses, resolve_data_dir

CLASS_FOLDER = re.compile(r"(\d{3})\.\S+")


def chen_split(number: int) -> Split:
  """Chen et al.'s split of the class numbered ``number`` (1–200, its folder's ``NNN.`` prefix)."""
  index = number - 1
  return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def _split_files(root: Path, found: list[str]) -> Optional[dict[str, list[str]]]:
  """``{split: class names}`` from ``splits/{train,val,test}.txt`` beside ``images/`` (``root``)
  or, for ``<data_dir>/CUB_200_2011/``, in ``<data_dir>``; ``None`` when neither has any.
  Every name must be one of the class folders ``found``.

  Raises:
    FileNotFoundError: one or two of the three files (a split left to Chen's rule could
      overlap the others).
    ValueError: an unknown class, or a class in two splits.
  """
  for base in (root, root.parent) if root.name == "CUB_200_2011" else (root,):
    paths = {split: base / "splits" / f"{split}.txt" for split in folders.SPLITS}
    present = [split for split, path in paths.items() if path.is_file()]
    if not present:
      continue
    if len(present) < len(paths):
      raise FileNotFoundError(f"CUB: {base / 'splits'}/ has {', '.join(f'{s}.txt' for s in present)} but not "
                              f"{', '.join(f'{s}.txt' for s in folders.SPLITS if s not in present)}; give all three")
    table = {split: folders.read_names(path) for split, path in paths.items()}
    for split, path in paths.items():
      folders.check_known(table[split], found, path)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
      shared = sorted(set(table[a]) & set(table[b]))
      if shared:
        raise ValueError(f"CUB: {paths[a]} and {paths[b]} share class(es) {', '.join(shared[:5])}")
    return table
  return None


def load(split: Split = "train", data_dir: Optional[str | os.PathLike] = None, *,
         image_size: int = 84, examples_per_class: Optional[int] = None,
         cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Loads a split: ``images (classes, max images, s, s, 3)`` uint8 with ``counts``, names sorted.

  Args:
    split: ``"train"``, ``"val"`` or ``"test"``.
    data_dir: the folder holding ``CUB_200_2011/images/`` or ``images/`` (default ``$METAJAX_DATA``).
    image_size: side of the square output images.
    examples_per_class: keep at most the first this many images of each class (by file name).
    cache_dir: where decoded arrays are cached (default ``$METAJAX_CACHE`` or ``~/.cache/metajax``).

  Raises:
    FileNotFoundError: no data folder, no ``images/`` folder, one or two of the three split files.
    ValueError: a class folder not named ``NNN.Name`` or two with one number (without split
      files), an unknown
      class in a split file or one in two splits, an empty class folder.
    metajax.data.images.ImageError: an image that cannot be decoded.
  """
  if split not in folders.SPLITS:
    raise ValueError(f"unknown CUB split {split!r}; choose one of {folders.SPLITS}")
  root = resolve_data_dir(data_dir, ("CUB_200_2011",))
  images = root / "images"
  if not images.is_dir():
    raise FileNotFoundError(f"CUB: {images}/ not found (expected <data_dir>/CUB_200_2011/images/<NNN.Class>/ "
                            "or <data_dir>/images/<NNN.Class>/)")
  found = folders.subfolders(images)
  split_files = _split_files(root, found)
  if split_files is not None:
    names = sorted(split_files[split])
  else:
    odd = [name for name in found if not (CLASS_FOLDER.fullmatch(name) and 1 <= int(name[:3]) <= 200)]
    if odd:
      raise ValueError(f"{images}: class folder(s) {', '.join(odd[:5])} not named NNN.Name (001-200); "
                       "name them so or give split files splits/{train,val,test}.txt")
    twice = sorted({a for a, b in zip(found, found[1:]) if a[:3] == b[:3]})
    if twice:
      raise ValueError(f"{images}: class folders {', '.join(twice[:5])} share their number with the next one; "
                       "Chen et al.'s split needs one folder per number 001-200")
    names = [name for name in found if chen_split(int(name[:3])) == split]
  return folders.load_classes(folders.class_files(images, names, f"CUB {split}"), f"CUB {split}",
                              image_size=image_size, examples_per_class=examples_per_class, ragged=True,
                              cache_prefix=f"cub-{split}", cache_dir=cache_dir)
