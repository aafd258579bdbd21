"""CIFAR-FS and FC100: few-shot benchmarks on CIFAR-100's 100 classes of 600 32×32 RGB images.

* **CIFAR-FS** (Bertinetto et al., 2019, "Meta-learning with differentiable closed-form
  solvers"): a random class split, 64 / 16 / 20 classes.
* **FC100** (Oreshkin et al., 2018, "TADAM: Task dependent adaptive metric for improved
  few-shot learning"): split by superclass to keep train and test apart, 12 / 4 / 4
  superclasses of 5 classes, so 60 / 20 / 20 classes.

The class lists are :data:`CIFAR_FS_SPLITS` and :data:`FC100_SPLITS` (as in torchmeta's
assets). Three layouts are read, from ``data_dir`` or ``$METAJAX_DATA`` (directly, or in a
``cifar-fs/`` or ``fc100/`` subfolder named after the benchmark, else ``cifar-100-python/``,
``cifar100/``, ``cifar-fs/`` or ``fc100/``), first found first:

* the CIFAR-100 python pickles ``train``, ``test`` and ``meta`` (500 + 100 images of each
  class, all used), read by :func:`metajax.data.safe_pickle.load`: plain numpy arrays,
  lists, dicts, strings and numbers only; a pickle naming or building anything else
  raises :class:`UnsafePickleError` without running it;
* split folders ``<root>/<split>/<class>/*.png``, holding exactly the split's classes;
* the CIFAR-FS release's ``<root>/data/<class>/*.png``, the classes chosen by
  ``<root>/splits/bertinetto/<split>.txt`` (one class a line) for CIFAR-FS when present,
  else by the lists here.

Classes come sorted by name; images are resized (and cached) when ``image_size`` is not 32.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, get_args

import numpy as np

from metajax.data import folders
from metajax.data import images as imgs
from metajax.data import safe_pickle
from metajax.data.folders import Split
from metajax.data.images import ImageClasses, resolve_data_dir
from metajax.data.safe_pickle import UnsafePickleError

Benchmark = Literal["cifar-fs", "fc100"]
SUBFOLDERS = ("cifar-100-python", "cifar100", "cifar-fs", "CIFAR-FS", "fc100", "FC100")
OWN_SUBFOLDERS = {"cifar-fs": ("cifar-fs", "CIFAR-FS"), "fc100": ("fc100", "FC100")}  # searched first
PICKLES = ("train", "test", "meta")

# CIFAR-100's 20 superclasses and their 5 classes each (its coarse and fine labels).
SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

# Bertinetto et al.'s class split ("bertinetto" split files of the CIFAR-FS release).
CIFAR_FS_SPLITS: dict[Split, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin",
        "elephant", "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion",
        "lizard", "lobster", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree",
        "pear", "pine_tree", "plate", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal",
        "shrew", "skunk", "skyscraper", "snake", "spider", "squirrel", "streetcar", "sunflower", "tank",
        "tiger", "train", "trout", "tulip", "turtle", "willow_tree", "wolf"),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
        "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor"),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
        "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman",
        "worm"),
}

# Oreshkin et al.'s superclass split; FC100_SPLITS lists the classes of these superclasses.
FC100_SUPERCLASS_SPLITS: dict[Split, tuple[str, ...]] = {
    "train": ("fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
              "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
              "reptiles", "trees", "vehicles_1", "vehicles_2"),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}
FC100_SPLITS: dict[Split, tuple[str, ...]] = {
    split: tuple(sorted(c for s in supers for c in SUPERCLASSES[s]))
    for split, supers in FC100_SUPERCLASS_SPLITS.items()}
CLASSES = tuple(sorted(c for members in SUPERCLASSES.values() for c in members))  # CIFAR-100's fine labels
TITLES = {"cifar-fs": "CIFAR-FS", "fc100": "FC100"}


def read_pickle(path: Path) -> dict:
  """A CIFAR-100 pickle's dict, keys as text (``b"data"`` and ``"data"`` alike).

  Raises:
    UnsafePickleError: the pickle names a disallowed Python object (nothing is run).
    ValueError: not a readable pickle of a dict.
  """
  try:
    with open(path, "rb") as f:
      table = safe_pickle.load(f, str(path))
  except UnsafePickleError:
    raise
  except Exception as err:  # whatever a damaged pickle makes the unpickler raise: name the file
    raise ValueError(f"{path}: not a readable CIFAR-100 pickle ({type(err).__name__}: {err})") from err
  if not isinstance(table, dict):
    raise ValueError(f"{path}: expected a pickled dict, got {type(table).__name__}")
  return {_text(k): v for k, v in table.items()}


def _text(value) -> str:
  return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _entry(table: dict, key: str, path: Path):
  if key not in table:
    raise ValueError(f"{path}: CIFAR-100 pickle lacks the {key!r} entry (has {', '.join(sorted(table))})")
  return table[key]


def _from_pickles(root: Path) -> dict[str, np.ndarray]:
  """``{class name: (600, 32, 32, 3) uint8}`` from the train and test pickles (train images first)."""
  names = _entry(read_pickle(root / "meta"), "fine_label_names", root / "meta")
  names = [_text(n) for n in names] if isinstance(names, (list, tuple)) else None
  if names is None or sorted(names) != list(CLASSES):
    raise ValueError(f"{root / 'meta'}: fine_label_names are not CIFAR-100's 100 class names")
  parts = []
  for part in ("train", "test"):
    path = root / part
    table = read_pickle(path)
    data, labels = np.asarray(_entry(table, "data", path)), np.asarray(_entry(table, "fine_labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),) \
        or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{path}: expected 'data' (N, 3072) uint8 and N integer 'fine_labels', got "
                       f"{data.dtype} {data.shape} and {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
      raise ValueError(f"{path}: fine_labels outside 0..{len(names) - 1}")
    parts.append((data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels))
  return {name: np.concatenate([images[labels == i] for images, labels in parts]) for i, name in enumerate(names)}


def _pickled_classes(root: Path, names: tuple[str, ...], image_size: int,
                     examples_per_class: Optional[int]) -> ImageClasses:
  table = _from_pickles(root)
  empty = [n for n in names if not len(table[n])]
  if empty:
    raise ValueError(f"{root}: the CIFAR-100 pickles hold no image of class(es) {', '.join(empty)}")
  arrays = [table[name][:examples_per_class] for name in names]
  if image_size != 32:
    from PIL import Image

    arrays = [np.stack([imgs.fit(Image.fromarray(x), (image_size, image_size), "RGB") for x in a]) for a in arrays]
  stacked, counts = folders.pad_stack(arrays)
  return ImageClasses(stacked, np.array(names), counts)


def _folder_classes(root: Path, split: Split, benchmark: Benchmark) -> dict[str, list[Path]]:
  """Image files of the split's classes in a split-folder or ``data/`` layout."""
  title, standard = TITLES[benchmark], standard_classes(benchmark, split)
  if (root / split).is_dir():
    found = folders.subfolders(root / split)
    if found != list(standard):
      extra, missing = sorted(set(found) - set(standard)), sorted(set(standard) - set(found))
      raise ValueError(f"{root / split}: the class folders are not {title}'s {split} split "
                       f"(unexpected: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
    return folders.class_files(root / split, found, f"{title} {split}")
  names, split_file = standard, root / "splits" / "bertinetto" / f"{split}.txt"
  if benchmark == "cifar-fs" and split_file.is_file():
    names = tuple(sorted(folders.read_names(split_file)))
    folders.check_known(names, CLASSES, split_file)
  return folders.class_files(root / "data", names, f"{title} {split}")


def standard_classes(benchmark: Benchmark, split: Split) -> tuple[str, ...]:
  """The class names of a split, sorted: :data:`CIFAR_FS_SPLITS` or :data:`FC100_SPLITS`."""
  return (CIFAR_FS_SPLITS if benchmark == "cifar-fs" else FC100_SPLITS)[split]


def load(split: Split = "train", data_dir: Optional[str | os.PathLike] = None, *,
         benchmark: Benchmark = "cifar-fs", image_size: int = 32, examples_per_class: Optional[int] = None,
         cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Loads a CIFAR-FS or FC100 split: ``images (classes, 600, s, s, 3)`` uint8, names sorted.

  Args:
    split: ``"train"``, ``"val"`` or ``"test"``.
    data_dir: the folder holding one of the layouts (default ``$METAJAX_DATA``).
    benchmark: ``"cifar-fs"`` or ``"fc100"``: which class split.
    image_size: side of the square output images (CIFAR-100's are 32).
    examples_per_class: keep at most this many images of each class (the first ones:
      CIFAR-100's training images before its test images).
    cache_dir: where decoded arrays are cached (default ``$METAJAX_CACHE`` or ``~/.cache/metajax``).

  Raises:
    FileNotFoundError: no data folder, none of the layouts, a missing class folder.
    ValueError: an unknown class name in a split file, an empty class folder, a split
      folder with other classes, a pickle of the wrong content.
    UnsafePickleError: a pickle naming a Python object that is not a numpy array.
    metajax.data.images.ImageError: an image that cannot be decoded.
  """
  if benchmark not in TITLES:
    raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {get_args(Benchmark)}")
  title = TITLES[benchmark]
  if split not in folders.SPLITS:
    raise ValueError(f"unknown {title} split {split!r}; choose one of {folders.SPLITS}")
  root = resolve_data_dir(data_dir, OWN_SUBFOLDERS[benchmark] + SUBFOLDERS)
  pickles = [name for name in PICKLES if (root / name).is_file()]
  if pickles:
    if len(pickles) < len(PICKLES):
      raise FileNotFoundError(f"{title}: CIFAR-100 pickle(s) {', '.join(sorted(set(PICKLES) - set(pickles)))} "
                              f"missing beside {', '.join(pickles)} in {root}")
    names = standard_classes(benchmark, split)
    key = {"pickles": [imgs.source_fingerprint(root / name) for name in PICKLES], "classes": names,
           "size": image_size, "per_class": examples_per_class, "version": 1}
    build = lambda: folders.to_arrays(_pickled_classes(root, names, image_size, examples_per_class))
    return folders.from_arrays(imgs.cached(imgs.cache_dir(cache_dir), f"{benchmark}-{split}", key, build))
  if not ((root / split).is_dir() or (root / "data").is_dir()):
    raise FileNotFoundError(f"{title}: found none of {root}/{{train,test,meta}} (CIFAR-100 python pickles), "
                            f"{root / split}/ (split folders) or {root / 'data'}/ (class folders)")
  return folders.load_classes(_folder_classes(root, split, benchmark), f"{title} {split}", image_size=image_size,
                              examples_per_class=examples_per_class, ragged=True,
                              cache_prefix=f"{benchmark}-{split}", cache_dir=cache_dir)
