"""Omniglot (Lake et al., 2015) as arrays of classes × drawers × pixels.

Reads the standard layout ``<root>/<alphabet>/<character>/<image>.png`` from a
folder, or straight from the original zips (``images_background.zip``,
``images_evaluation.zip`` and the small subsets), whose entries are
``<top>/<alphabet>/<character>/<image>.png``. Images are decoded once (Pillow),
resized (default 28×28), and cached as uint8 arrays keyed by the source.

Splits:

* Vinyals et al. (2016) character split (default protocol): ``"train"``,
  ``"val"``, ``"trainval"``, ``"test"``; read from ``splits/vinyals/<split>.txt``,
  each line ``Alphabet/characterNN/rotDDD`` a class.
* Lake's alphabet split: ``"background"``, ``"evaluation"``,
  ``"background_small1"``, ``"background_small2"`` (one zip or folder each);
  with ``rotations=True`` (the MAML paper) each character also appears rotated
  by 90°, 180° and 270° as three more classes.

The data folder is the ``data_dir`` argument, else ``$METAJAX_DATA``; it may hold
the files directly or in an ``omniglot/`` subfolder. Nothing is downloaded.
"""
from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from metajax.data import images as imgs
from metajax.data.images import ImageClasses, resolve_data_dir

VINYALS_SPLITS = ("train", "val", "trainval", "test")
LAKE_SPLITS = ("background", "evaluation", "background_small1", "background_small2")
ROTATIONS = (0, 90, 180, 270)


def _character_files(source: Path) -> dict[str, list[tuple[str, bytes]]]:
  """``{"Alphabet/characterNN": [(file name, bytes), ...]}`` from a zip or a folder."""
  chars: dict[str, list[tuple[str, bytes]]] = {}
  if source.is_file():
    try:
      with zipfile.ZipFile(source) as z:
        for info in z.infolist():
          parts = info.filename.strip("/").split("/")
          if info.is_dir() or len(parts) != 4 or not imgs.is_image_name(parts[-1]):
            continue
          chars.setdefault(f"{parts[1]}/{parts[2]}", []).append((f"{source}:{info.filename}", z.read(info)))
    except zipfile.BadZipFile as err:
      raise ValueError(f"{source}: not a readable zip file ({err})") from err
  else:
    for alphabet in sorted(p for p in source.iterdir() if p.is_dir()):
      for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
        files = [(str(f), f.read_bytes()) for f in sorted(character.iterdir())
                 if f.is_file() and imgs.is_image_name(f.name)]
        if not files:
          raise ValueError(f"{character}: character folder holds no image files")
        chars[f"{alphabet.name}/{character.name}"] = files
  if not chars:
    raise ValueError(f"{source}: no <alphabet>/<character>/<image> files found (expected the "
                     "Omniglot layout)")
  return chars


def _odd_character(chars: dict[str, list]) -> str:
  """Names the first character whose drawing count is not the usual one, and the files that do
  not follow its drawers' ``<prefix>_<drawer>`` naming (the usual culprit, e.g. a stray file)."""
  usual = Counter(len(files) for files in chars.values()).most_common(1)[0][0]
  odd = next(n for n in sorted(chars) if len(chars[n]) != usual)
  files = [Path(name).name for name, _ in chars[odd]]
  prefix = Counter(f.split("_")[0] for f in files).most_common(1)[0][0]
  strays = [f for f in files if f.split("_")[0] != prefix]
  detail = f"; files not named {prefix}_<drawer>: {', '.join(strays)}" if strays else ""
  return f"{odd} has {len(files)} where the others have {usual}{detail}"


def _decode_source(source: Path, size: int, resample: imgs.Resample) -> dict[str, np.ndarray]:
  chars = _character_files(source)
  names = sorted(chars)
  counts = {len(chars[n]) for n in names}
  if len(counts) != 1:
    raise ValueError(f"{source}: characters have different numbers of drawings {sorted(counts)}; "
                     + _odd_character(chars))
  array = np.stack([np.stack([imgs.decode(data, name, (size, size), "L", resample)
                              for name, data in sorted(chars[n])]) for n in names])
  return {"images": array, "names": np.array(names)}


def load_source(source: str | os.PathLike, image_size: int = 28,
                cache_dir: Optional[str | os.PathLike] = None, resample: imgs.Resample = "lanczos") -> ImageClasses:
  """All characters of one zip or folder, unrotated: ``images (chars, drawers, s, s)``."""
  source = Path(source)
  if not source.exists():
    raise FileNotFoundError(f"Omniglot source {str(source)!r} does not exist")
  imgs.check_resample(resample)
  key = {"source": imgs.source_fingerprint(source), "size": image_size, "resample": resample, "version": 1}
  arrays = imgs.cached(imgs.cache_dir(cache_dir), "omniglot", key,
                       lambda: _decode_source(source, image_size, resample))
  return ImageClasses(arrays["images"], arrays["names"])


def _find_source(root: Path, name: str) -> Path:
  for candidate in (root / name, root / f"{name}.zip"):
    if candidate.exists():
      return candidate
  raise FileNotFoundError(f"Omniglot: neither {root / name}/ nor {root / name}.zip exists")


def rotate(images: np.ndarray, degrees: int) -> np.ndarray:
  """Rotates ``(…, h, w)`` images counter-clockwise by a multiple of 90 degrees."""
  if degrees % 90:
    raise ValueError(f"rotation must be a multiple of 90 degrees, got {degrees}")
  return np.rot90(images, k=degrees // 90, axes=(-2, -1))


def alphabet_ids(classes: ImageClasses) -> np.ndarray:
  """``(classes,)`` int32 index of each class's alphabet (names are ``<alphabet>/<character>[/rot…]``),
  for ``episodes.sample(groups=...)``: Lake et al.'s within-alphabet tasks."""
  return np.unique([name.split("/")[0] for name in classes.names], return_inverse=True)[1].astype(np.int32)


def load(split: str = "trainval", data_dir: Optional[str | os.PathLike] = None, *,
         image_size: int = 28, rotations: bool = True, resample: imgs.Resample = "lanczos",
         invert: bool = False, cache_dir: Optional[str | os.PathLike] = None) -> ImageClasses:
  """Loads an Omniglot split as ``ImageClasses`` (``images (classes, 20, s, s)`` uint8).

  Args:
    split: a Vinyals split (``train``, ``val``, ``trainval``, ``test``) or a Lake
      set (``background``, ``evaluation``, ``background_small1``, ``background_small2``).
    data_dir: folder with the zips (or unzipped folders) and ``splits/``; default
      ``$METAJAX_DATA``.
    image_size: side of the square output images.
    rotations: for Lake sets, add 90/180/270° rotations as classes (Vinyals
      split files list their rotations themselves).
    resample: how the 105×105 1-bit drawings shrink: ``"lanczos"`` (grey levels) or
      ``"nearest"``, black and white, as the MAML, ProtoNet, Reptile and Relation network
      codes had them (Pillow resizes 1-bit images with nearest neighbours whatever filter
      is asked for).
    invert: strokes 255 on a 0 background (``255 - image``: the ``1.0 - image`` of MAML's
      and ProtoNet's codes, strokes 1 on 0 after scaling), instead of the PNGs' dark
      strokes on white.
    cache_dir: where decoded arrays are cached (default ``$METAJAX_CACHE`` or
      ``~/.cache/metajax``).
  """
  if not isinstance(invert, bool):
    raise ValueError(f"invert must be True or False, got {invert!r}")
  root = resolve_data_dir(data_dir, ("omniglot",))
  if split in LAKE_SPLITS:
    base = load_source(_find_source(root, f"images_{split}"), image_size, cache_dir, resample)
    angles = ROTATIONS if rotations else (0,)
    images = np.concatenate([rotate(base.images, a) for a in angles])
    names = np.array([f"{n}/rot{a:03d}" for a in angles for n in base.names])
    return _inverted(ImageClasses(np.ascontiguousarray(images), names), invert)
  if split not in VINYALS_SPLITS:
    raise ValueError(f"unknown Omniglot split {split!r}; choose one of {VINYALS_SPLITS + LAKE_SPLITS}")
  split_file = root / "splits" / "vinyals" / f"{split}.txt"
  if not split_file.is_file():
    raise FileNotFoundError(f"Omniglot: split file {split_file} not found")
  lines = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
  table: dict[str, np.ndarray] = {}
  for name in ("background", "evaluation"):
    part = load_source(_find_source(root, f"images_{name}"), image_size, cache_dir, resample)
    table.update(zip(part.names.tolist(), part.images))
  out = []
  for line in lines:
    character, _, rot = line.rpartition("/")
    if character not in table or not rot.startswith("rot"):
      raise ValueError(f"{split_file}: line {line!r} names no known character/rotation")
    out.append(rotate(table[character], int(rot[3:])))
  return _inverted(ImageClasses(np.ascontiguousarray(np.stack(out)), np.array(lines)), invert)


def _inverted(classes: ImageClasses, invert: bool) -> ImageClasses:
  """``classes`` with its uint8 images inverted (``255 - image``) when ``invert``."""
  return classes._replace(images=255 - classes.images) if invert else classes
