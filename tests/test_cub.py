"""CUB-200-2011 on small synthetic trees: Chen et al.'s split, split files, ragged classes,
errors, and ``metajax train``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metajax.data import cub
from metajax.data.images import ImageError
from metajax.harness.cli import main


def _tree(data_dir: Path, numbers=range(1, 13), sizes=(2, 3, 4)) -> Path:
  """``CUB_200_2011/images/NNN.Bird_N/`` with 2, 3 or 4 images (by number) of colour (N, k, 50)."""
  for n in numbers:
    for k in range(sizes[n % len(sizes)]):
      path = data_dir / "CUB_200_2011" / "images" / f"{n:03d}.Bird_{n}" / f"Bird_{n}_{k:04d}_{n}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.new("RGB", (30, 20), (n, 40 * k, 50)).save(path)
  return data_dir


def test_chen_split_over_all_200_classes():
  splits = [cub.chen_split(n) for n in range(1, 201)]
  assert [splits.count(s) for s in ("train", "val", "test")] == [100, 50, 50]
  assert splits[:8] == ["train", "val", "train", "test"] * 2


def test_splits_from_folder_numbers_with_ragged_classes(tmp_path):
  root = _tree(tmp_path)
  train = cub.load("train", root, cache_dir=tmp_path / "c")
  assert train.names.tolist() == [f"{n:03d}.Bird_{n}" for n in (1, 3, 5, 7, 9, 11)]
  assert train.images.shape == (6, 4, 84, 84, 3) and train.counts.tolist() == [3, 2, 4, 3, 2, 4]
  np.testing.assert_allclose(train.images[2, 3, 40, 40], (5, 120, 50), atol=3)
  assert cub.load("val", root, cache_dir=tmp_path / "c").names.tolist() == ["002.Bird_2", "006.Bird_6", "010.Bird_10"]
  test = cub.load("test", root, cache_dir=tmp_path / "c")
  assert test.names.tolist() == ["004.Bird_4", "008.Bird_8", "012.Bird_12"]
  (root / "CUB_200_2011" / "images" / "003.Bird_3").rename(tmp_path / "gone")  # others keep their split
  assert cub.load("train", root, image_size=8, cache_dir=tmp_path / "c").names.tolist() == \
      [f"{n:03d}.Bird_{n}" for n in (1, 5, 7, 9, 11)]


def test_flat_images_folder_and_equal_classes(tmp_path):
  _tree(tmp_path, sizes=(3,))
  flat = tmp_path / "CUB_200_2011"
  data = cub.load("val", flat, image_size=12, examples_per_class=2, cache_dir=tmp_path / "c")
  assert data.images.shape == (3, 2, 12, 12, 3) and data.counts is None


def test_split_files_replace_chen_split(tmp_path):
  root = _tree(tmp_path)
  splits = root / "splits"
  splits.mkdir()
  (splits / "train.txt").write_text("001.Bird_1\n002.Bird_2\n")
  (splits / "val.txt").write_text("003.Bird_3\n")
  with pytest.raises(FileNotFoundError, match="has train.txt, val.txt but not test.txt; give all three"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  (splits / "test.txt").write_text("004.Bird_4\n")
  assert cub.load("train", root, cache_dir=tmp_path / "c").names.tolist() == ["001.Bird_1", "002.Bird_2"]
  (splits / "test.txt").write_text("004.Bird_4\n999.Dodo\n")
  with pytest.raises(ValueError, match=r"test.txt: unknown class name\(s\) 999.Dodo"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  (splits / "test.txt").write_text("002.Bird_2\n")
  with pytest.raises(ValueError, match="train.txt and .*test.txt share class.*002.Bird_2"):
    cub.load("val", root, cache_dir=tmp_path / "c")


def test_layout_errors_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="CUB: .*images/ not found"):
    cub.load("train", tmp_path)
  root = _tree(tmp_path)
  images = root / "CUB_200_2011" / "images"
  (images / "attributes").mkdir()
  with pytest.raises(ValueError, match="class folder.*attributes not named NNN.Name"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  (images / "attributes").rename(images / "013.Bird_13")
  with pytest.raises(ValueError, match="013.Bird_13: class folder holds no image files"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  (images / "013.Bird_13").rename(images / "005.Another_bird")
  with pytest.raises(ValueError, match="005.Another_bird share their number"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  (images / "005.Another_bird").rmdir()
  (images / "005.Bird_5" / "Bird_5_0001_5.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(ImageError, match="Bird_5_0001_5.jpg"):
    cub.load("train", root, cache_dir=tmp_path / "c")
  with pytest.raises(ValueError, match="unknown CUB split 'novel'"):
    cub.load("novel", root)


@pytest.mark.slow  # the CLI wiring of ragged sets runs by default in test_tiered_imagenet
def test_train_cub(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  root = _tree(tmp_path, numbers=range(1, 21))
  assert main(["train", "--dataset", "cub", "--data-dir", str(root), "--algo", "fomaml", "--ways", "3",
               "--width", "4", "--steps", "2", "--chunk", "2", "--meta-batch", "2", "--queries", "1",
               "--eval-queries", "1", "--eval-tasks", "4"]) == 0
  assert "eval on 4 new cub tasks (3-way 1-shot, 1 inner step(s)) after 2 meta-steps: accuracy" in \
      capsys.readouterr().out
