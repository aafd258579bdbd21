"""mini-ImageNet loader on small synthetic trees in both common layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metajax.data import mini_imagenet
from metajax.data.images import ImageError


def _jpg(path: Path, colour, size=(100, 90), mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, colour).save(path)


def _folders(root: Path, classes=3, per_class=4) -> Path:
  for split in ("train", "test"):
    for c in range(classes):
      for i in range(per_class):
        _jpg(root / split / f"n0{c}" / f"n0{c}_{i:03d}.jpg", (40 * c, 10 * i, 200))
  return root


def _csv(root: Path, classes=3, per_class=4) -> Path:
  rows = ["filename,label"]
  for c in range(classes):
    for i in range(per_class):
      name = f"n0{c}{i:04d}.png"
      _jpg(root / "images" / name, (40 * c, 10 * i, 200))
      rows.append(f"{name},n0{c}")
  (root / "train.csv").write_text("\n".join(rows) + "\n")
  return root


def test_split_folders(tmp_path):
  data = mini_imagenet.load("train", _folders(tmp_path / "mini-imagenet"), cache_dir=tmp_path / "c")
  assert data.images.shape == (3, 4, 84, 84, 3) and data.images.dtype == np.uint8
  assert data.names.tolist() == ["n00", "n01", "n02"]
  np.testing.assert_allclose(data.images[2, 1, 40, 40], (80, 10, 200), atol=2)


def test_csv_layout_equals_folder_layout(tmp_path):
  a = mini_imagenet.load("train", _folders(tmp_path / "a"), image_size=16, cache_dir=tmp_path / "c")
  b = mini_imagenet.load("train", _csv(tmp_path / "b"), image_size=16, cache_dir=tmp_path / "c")
  assert a.images.shape == b.images.shape == (3, 4, 16, 16, 3)
  np.testing.assert_allclose(a.images.astype(int), b.images.astype(int), atol=3)  # jpg vs png


def test_data_dir_subfolder_is_found(tmp_path):
  _folders(tmp_path / "miniImageNet")
  assert mini_imagenet.load("test", tmp_path, cache_dir=tmp_path / "c").images.shape[0] == 3


def test_missing_split_is_named(tmp_path):
  _folders(tmp_path)
  with pytest.raises(FileNotFoundError, match="val"):
    mini_imagenet.load("val", tmp_path, cache_dir=tmp_path / "c")
  with pytest.raises(ValueError, match="unknown mini-ImageNet split"):
    mini_imagenet.load("validation", tmp_path)


def test_unequal_classes_are_named_or_truncated_on_request(tmp_path):
  root = _folders(tmp_path)
  (root / "train" / "n01" / "n01_003.jpg").unlink()
  with pytest.raises(ValueError, match="different numbers of images"):
    mini_imagenet.load("train", root, cache_dir=tmp_path / "c")
  data = mini_imagenet.load("train", root, examples_per_class=3, cache_dir=tmp_path / "c")
  assert data.images.shape[:2] == (3, 3)


def test_corrupt_image_grayscale_and_empty_class(tmp_path):
  root = _folders(tmp_path)
  _jpg(root / "train" / "n00" / "n00_000.jpg", 128, mode="L")  # grayscale: converted to RGB
  data = mini_imagenet.load("train", root, cache_dir=tmp_path / "c1")
  np.testing.assert_allclose(data.images[0, 0, 10, 10], (128, 128, 128), atol=2)
  (root / "train" / "n02" / "n02_001.jpg").write_bytes(b"\xff\xd8 broken")
  with pytest.raises(ImageError, match="n02_001.jpg"):
    mini_imagenet.load("train", root, cache_dir=tmp_path / "c2")
  (root / "test" / "n09").mkdir()
  with pytest.raises(ValueError, match="n09.*no image files"):
    mini_imagenet.load("test", root, cache_dir=tmp_path / "c3")


def test_csv_with_missing_images_or_bad_header(tmp_path):
  root = _csv(tmp_path)
  (root / "images" / "n000001.png").unlink()
  with pytest.raises(FileNotFoundError, match="missing"):
    mini_imagenet.load("train", root, cache_dir=tmp_path / "c")
  (root / "train.csv").write_text("file,class\na.png,n0\n")
  with pytest.raises(ValueError, match="header"):
    mini_imagenet.load("train", root, cache_dir=tmp_path / "c")
