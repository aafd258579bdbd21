"""tiered-ImageNet on small synthetic trees: split folders, the ImageNet folder with split CSVs,
categories, ragged classes, errors, and ``metajax train``."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from metajax.data import episodes, tiered_imagenet
from metajax.data.images import ImageError
from metajax.harness.cli import main

# synset -> (category, images); class sizes differ as in the real set
CLASSES = {"n01": ("c1", 3), "n02": ("c1", 5), "n03": ("c2", 4), "n04": ("c2", 3)}


def _jpg(path: Path, colour) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (24, 20), colour).save(path)


def _csv(path: Path, synsets) -> None:
  path.write_text("".join(f"{s},{CLASSES[s][0]}\n" for s in synsets))


def _split_folders(root: Path, split: str = "train") -> Path:
  for c, (synset, (_, n)) in enumerate(CLASSES.items()):
    for k in range(n):
      _jpg(root / split / synset / f"{synset}_{k:04d}.jpg", (50 * c, 40 * k, 100))
  return root


def _imagenet(root: Path) -> Path:
  """ImageNet-style synset folders (one more than the split uses) and a train CSV."""
  for c, (synset, (_, n)) in enumerate(CLASSES.items()):
    for k in range(n):
      _jpg(root / synset / f"{synset}_{k:04d}.JPEG", (50 * c, 40 * k, 100))
  _jpg(root / "n99" / "n99_0000.JPEG", (0, 0, 0))
  _csv(root / "train.csv", CLASSES)
  return root


def test_split_folders_keep_every_image_and_count_them(tmp_path):
  data = tiered_imagenet.load("train", _split_folders(tmp_path / "tiered-imagenet"), cache_dir=tmp_path / "c")
  assert data.images.shape == (4, 5, 84, 84, 3) and data.images.dtype == np.uint8
  assert data.names.tolist() == ["n01", "n02", "n03", "n04"] and data.counts.tolist() == [3, 5, 4, 3]
  np.testing.assert_allclose(data.images[2, 3, 40, 40], (100, 120, 100), atol=3)
  assert data.images[0, 3:].max() == 0  # padding
  with pytest.raises(ValueError, match="category"):
    tiered_imagenet.category_ids(data)
  capped = tiered_imagenet.load("train", tmp_path, examples_per_class=4, image_size=8, cache_dir=tmp_path / "c")
  assert capped.images.shape == (4, 4, 8, 8, 3) and capped.counts.tolist() == [3, 4, 4, 3]


def test_imagenet_folder_with_csv_equals_split_folders_and_names_categories(tmp_path):
  a = tiered_imagenet.load("train", _split_folders(tmp_path / "a"), image_size=16, cache_dir=tmp_path / "c")
  b = tiered_imagenet.load("train", _imagenet(tmp_path / "b"), image_size=16, cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.counts, b.counts)
  assert b.names.tolist() == ["c1/n01", "c1/n02", "c2/n03", "c2/n04"]
  assert tiered_imagenet.category_ids(b).tolist() == [0, 0, 1, 1]
  again = tiered_imagenet.load("train", tmp_path / "b", image_size=16, cache_dir=tmp_path / "c")  # from the cache
  np.testing.assert_array_equal(again.images, b.images)
  assert again.names.tolist() == b.names.tolist() and again.counts.tolist() == b.counts.tolist()
  tasks = episodes.sample(jax.random.PRNGKey(0), jnp.asarray(b.images), num_tasks=8, ways=2, shots=1,
                          queries=2, counts=b.counts, groups=tiered_imagenet.category_ids(b))
  assert tasks.x_support.shape == (8, 2, 16, 16, 3)


def test_csv_beside_split_folders_must_list_the_same_synsets(tmp_path):
  root = _split_folders(tmp_path)
  _csv(root / "train.csv", ["n01", "n02", "n03"])
  with pytest.raises(ValueError, match="differ from .*train.csv's classes, e.g. n04"):
    tiered_imagenet.load("train", root, cache_dir=tmp_path / "c")
  _csv(root / "train.csv", CLASSES)
  assert tiered_imagenet.load("train", root, cache_dir=tmp_path / "c").names[0] == "c1/n01"


@pytest.mark.parametrize("text,match", [
    ("n01,c1\nn02\n", "train.csv, line 2: expected 'synset,category'"),
    ("n01,c1\nn01,c2\n", "line 2: synset n01 listed twice"),
    ("\n\n", "lists no classes"),
])
def test_malformed_csv_is_named(tmp_path, text, match):
  root = _imagenet(tmp_path)
  (root / "train.csv").write_text(text)
  with pytest.raises(ValueError, match=match):
    tiered_imagenet.load("train", root, cache_dir=tmp_path / "c")


def test_missing_and_broken_data_are_named(tmp_path):
  root = _imagenet(tmp_path)
  with pytest.raises(FileNotFoundError, match="neither .*val/ nor .*val.csv exists"):
    tiered_imagenet.load("val", root)
  with pytest.raises(ValueError, match="unknown tiered-ImageNet split 'valid'"):
    tiered_imagenet.load("valid", root)
  (root / "test.csv").write_text("n01,c1\nn77,c3\n")  # a synset without its folder
  with pytest.raises(FileNotFoundError, match=r"1 class folder\(s\) of tiered-ImageNet test missing: n77"):
    tiered_imagenet.load("test", root, cache_dir=tmp_path / "c")
  (root / "n03" / "n03_0001.JPEG").write_bytes(b"\xff\xd8 broken")
  with pytest.raises(ImageError, match="n03_0001.JPEG"):
    tiered_imagenet.load("train", root, cache_dir=tmp_path / "c")
  (root / "n77").mkdir()
  (root / "n77" / "notes.txt").write_text("no images here")
  with pytest.raises(ValueError, match="n77: class folder holds no image files"):
    tiered_imagenet.load("test", root, cache_dir=tmp_path / "c")


def test_train_tiered_imagenet_with_ragged_classes(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  root = _split_folders(tmp_path, "train")
  _split_folders(tmp_path, "test")
  assert main(["train", "--dataset", "tiered-imagenet", "--data-dir", str(root), "--algo", "protonet",
               "--ways", "3", "--train-ways", "3", "--width", "4", "--steps", "2", "--chunk", "2", "--queries", "2",
               "--eval-queries", "2", "--eval-tasks", "4"]) == 0
  assert "eval on 4 new tiered-imagenet tasks (3-way 1-shot" in capsys.readouterr().out
  assert main(["train", "--dataset", "tiered-imagenet", "--data-dir", str(root), "--ways", "3",
               "--queries", "3"]) == 2
  assert "shots + queries = 4 exceeds the 3 examples of the smallest class" in capsys.readouterr().err
