"""Decoding image files into uint8 arrays, and an on-disk cache of decoded arrays.

Shared by the image loaders. Handling of odd files:

* files whose suffix is not an image suffix (``.png``, ``.jpg``, ``.jpeg``,
  ``.bmp``, ``.gif``) are skipped — e.g. ``.DS_Store``, ``Thumbs.db``, notes;
* an image file that cannot be decoded raises :class:`ImageError` naming it;
* colour images are converted to the requested mode (``"L"`` or ``"RGB"``) and
  every image is resized to the requested size, so sources with mixed modes or
  sizes load consistently: with Lanczos by default, or with nearest neighbours
  (``resample="nearest"``), which is what Pillow does to 1-bit images such as
  Omniglot's whatever filter is asked for, and so what the papers' codes fed
  their networks (:data:`RESAMPLES`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, NamedTuple, Optional, Sequence, get_args

import numpy as np

if TYPE_CHECKING:
  from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
Resample = Literal["lanczos", "nearest"]
RESAMPLES = get_args(Resample)


class ImageClasses(NamedTuple):
  """A labelled image set, rectangular so that episodes can be drawn on device.

  Attributes:
    images: ``(classes, examples, h, w)`` uint8 (``(…, 3)`` for RGB sets).
    names: ``(classes,)`` class names, e.g. ``"Greek/character01/rot090"``.
    counts: ``None`` when every class holds ``examples`` images; else ``(classes,)``
      int32, class ``c``'s images being ``images[c, :counts[c]]`` and the rest zero
      padding (sets with classes of unequal sizes; pass to ``episodes.sample(counts=...)``).
  """

  images: np.ndarray
  names: np.ndarray
  counts: Optional[np.ndarray] = None


def resolve_data_dir(data_dir: Optional[str | os.PathLike], subfolders: Sequence[str]) -> Path:
  """``data_dir`` (else ``$METAJAX_DATA``), descending into the first of ``subfolders`` present.

  Raises:
    FileNotFoundError: naming the folder (or the unset variable).
  """
  if data_dir is None:
    data_dir = os.environ.get("METAJAX_DATA")
    if not data_dir:
      raise FileNotFoundError(
          f"no data directory: pass data_dir (--data-dir) or set METAJAX_DATA to the folder "
          f"holding {subfolders[0]}/")
  root = Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"data directory {str(root)!r} does not exist or is not a directory")
  for sub in subfolders:
    if (root / sub).is_dir():
      return root / sub
  return root


class ImageError(ValueError):
  """An image file that cannot be decoded."""


def is_image_name(name: str) -> bool:
  """Whether ``name`` has an image suffix (case-insensitive)."""
  return name.lower().endswith(IMAGE_SUFFIXES)


def check_resample(resample: Resample) -> None:
  """A ``ValueError`` naming the choices unless ``resample`` is one of :data:`RESAMPLES`."""
  if resample not in RESAMPLES:
    raise ValueError(f"unknown resample {resample!r}; choose one of {RESAMPLES}")


def decode(data: bytes, name: str, size: tuple[int, int], mode: Literal["L", "RGB"],
           resample: Resample = "lanczos") -> np.ndarray:
  """Decodes image bytes to ``(h, w)`` (mode ``"L"``) or ``(h, w, 3)`` (``"RGB"``) uint8, resized
  as :func:`fit` does.

  Raises:
    ImageError: naming ``name`` when the bytes are not a readable image.
  """
  from PIL import Image, UnidentifiedImageError

  check_resample(resample)
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      return fit(img, size, mode, resample)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
    raise ImageError(f"{name}: not a readable image ({err})") from err


def fit(img: PILImage.Image, size: tuple[int, int], mode: Literal["L", "RGB"],
        resample: Resample = "lanczos") -> np.ndarray:
  """A Pillow image converted to ``mode`` and resized to ``size`` (h, w) with ``resample``, as uint8.

  ``"lanczos"`` averages (a 1-bit drawing becomes grey levels); ``"nearest"`` samples, as Pillow
  resizes 1-bit images whatever filter is asked for (a 1-bit drawing stays black and white).
  """
  from PIL import Image

  check_resample(resample)
  img = img.convert(mode)
  if img.size != (size[1], size[0]):
    method = Image.Resampling.LANCZOS if resample == "lanczos" else Image.Resampling.NEAREST
    img = img.resize((size[1], size[0]), method)
  return np.asarray(img, dtype=np.uint8)


def cache_dir(path: Optional[str | os.PathLike] = None) -> Path:
  """The cache folder: ``path``, else ``$METAJAX_CACHE``, else ``~/.cache/metajax``."""
  if path is not None:
    return Path(path)
  return Path(os.environ.get("METAJAX_CACHE", Path.home() / ".cache" / "metajax"))


def source_fingerprint(path: Path) -> dict:
  """Identity of a source file or folder for cache keys: path, size and mtime (recursive for folders)."""
  path = path.resolve()
  if path.is_file():
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns}
  total, latest, count = 0, 0, 0
  for root, _, files in os.walk(path):
    for f in files:
      st = os.stat(os.path.join(root, f))
      total, latest, count = total + st.st_size, max(latest, st.st_mtime_ns), count + 1
  return {"path": str(path), "size": total, "mtime": latest, "files": count}


def cached(directory: Path, prefix: str, key: dict,
           build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Loads ``build()``'s arrays from ``directory`` if cached under ``key``, else builds and saves them.

  The file is written to a temporary name and renamed, so an interrupted write
  never leaves a truncated cache. A cache file that cannot be read is rebuilt.
  """
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  path = directory / f"{prefix}-{digest}.npz"
  if path.exists():
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
      pass
  arrays = build()
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except OSError:
    pass  # an unwritable cache only costs speed
  return arrays
