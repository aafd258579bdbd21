"""CIFAR-FS and FC100: the class splits, the safe reading of CIFAR-100 pickles, the image-folder
layouts, and ``metajax train`` on a synthetic CIFAR-100."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metajax.data import cifar100
from metajax.data.cifar100 import CIFAR_FS_SPLITS, FC100_SPLITS, SUPERCLASSES, UnsafePickleError
from metajax.data.images import ImageError
from metajax.harness.cli import main

TRAIN, TEST = 3, 1  # synthetic images per class in the train and test pickles (the real ones: 500 and 100)


class _Python2Pickler(pickle._Pickler):
  """Writes bytes as Python 2 ``str`` (BINSTRING) and numpy's module as numpy 1 named it: the
  CIFAR-100 pickles' format, read by the real loader with ``encoding="latin1"``."""

  dispatch = dict(pickle._Pickler.dispatch)

  def save_python2_str(self, obj):
    self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch[bytes] = save_python2_str


def _dump(obj, path: Path, python2: bool) -> None:
  if not python2:
    path.write_bytes(pickle.dumps(obj))
    return
  buf = io.BytesIO()
  _Python2Pickler(buf, protocol=2).dump(obj)
  path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def _pickles(root: Path, python2: bool = False, per_class: tuple[int, int] = (TRAIN, TEST)) -> Path:
  """A CIFAR-100 with ``per_class`` images of each class in ``train`` / ``test``, shuffled.

  Image k of class c in part p (0 train, 1 test) is the colour (c, 100 p + k, 7)."""
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for part, n in zip(("train", "test"), per_class):
    labels = np.repeat(np.arange(100), n)
    index = np.tile(np.arange(n), 100)
    colour = np.stack([labels, 100 * (part == "test") + index, np.full_like(labels, 7)], 1).astype(np.uint8)
    data = np.repeat(colour[:, :, None], 1024, axis=2).reshape(-1, 3072)  # channel-major rows
    order = rng.permutation(len(labels))
    order = order[np.argsort(index[order], kind="stable")]  # classes interleaved at random, each in k order
    _dump({b"batch_label": b"synthetic", b"data": data[order], b"fine_labels": labels[order].tolist(),
           b"coarse_labels": [0] * len(labels)}, root / part, python2)
  _dump({b"fine_label_names": [n.encode() for n in cifar100.CLASSES],
         b"coarse_label_names": [n.encode() for n in sorted(SUPERCLASSES)]}, root / "meta", python2)
  return root


def _png(path: Path, colour) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (32, 32), colour).save(path)


def _data_folder(root: Path, per_class: int = 2) -> Path:
  """The CIFAR-FS release layout ``data/<class>/*.png``: image k of class c is (c, k, 9)."""
  for c, name in enumerate(cifar100.CLASSES):
    for k in range(per_class):
      _png(root / "data" / name / f"{name}_{k}.png", (c, k, 9))
  return root


def test_the_splits_partition_cifar100_as_the_papers_say():
  for table, sizes in ((CIFAR_FS_SPLITS, (64, 16, 20)), (FC100_SPLITS, (60, 20, 20))):
    assert tuple(len(table[s]) for s in ("train", "val", "test")) == sizes
    everything = [c for split in table.values() for c in split]
    assert sorted(everything) == list(cifar100.CLASSES) and len(set(everything)) == 100  # disjoint, complete
    assert all(list(names) == sorted(names) for names in table.values())
  assert len(SUPERCLASSES) == 20 and all(len(v) == 5 for v in SUPERCLASSES.values())
  supers = cifar100.FC100_SUPERCLASS_SPLITS
  assert [len(supers[s]) for s in ("train", "val", "test")] == [12, 4, 4]
  assert sorted(s for split in supers.values() for s in split) == sorted(SUPERCLASSES)
  # the published lists (torchmeta's assets; checked against them when written), pinned
  assert sorted(CIFAR_FS_SPLITS["test"]) == [
      "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
      "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"]
  digest = lambda table: hashlib.sha256(json.dumps({k: sorted(v) for k, v in table.items()}, sort_keys=True)
                                        .encode()).hexdigest()
  assert digest(CIFAR_FS_SPLITS) == "acc916c754c1f3dde9cebb1a467a3d52311e7407d52b2ddc0eef61c52c2cf1ca"
  assert digest(FC100_SPLITS) == "81b19c3583d4181372412aa75b0dac139fc361ba653c47de8a110f66d468cb08"


@pytest.mark.parametrize("python2", [False, True], ids=["python3 pickles", "python2 pickles"])
def test_pickles_give_each_class_its_train_then_test_images(tmp_path, python2):
  root = _pickles(tmp_path / "cifar-100-python", python2=python2)
  data = cifar100.load("val", tmp_path, cache_dir=tmp_path / "c")
  assert data.images.shape == (16, TRAIN + TEST, 32, 32, 3) and data.images.dtype == np.uint8
  assert data.names.tolist() == list(CIFAR_FS_SPLITS["val"]) and data.counts is None
  for i, name in enumerate(data.names):
    c = cifar100.CLASSES.index(name)
    assert data.images[i, :, 5, 5].tolist() == [[c, 0, 7], [c, 1, 7], [c, 2, 7], [c, 100, 7]]
  fc = cifar100.load("test", root, benchmark="fc100", cache_dir=tmp_path / "c")
  assert fc.names.tolist() == list(FC100_SPLITS["test"]) and "baby" in fc.names


def test_cached_equals_uncached_and_options(tmp_path):
  _pickles(tmp_path)
  first = cifar100.load("train", tmp_path, benchmark="fc100", cache_dir=tmp_path / "c")
  assert len(list((tmp_path / "c").glob("fc100-train-*.npz"))) == 1
  again = cifar100.load("train", tmp_path, benchmark="fc100", cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(first.images, again.images)
  assert first.names.tolist() == again.names.tolist() and again.counts is None
  small = cifar100.load("train", tmp_path, image_size=16, examples_per_class=2, cache_dir=tmp_path / "c")
  assert small.images.shape == (64, 2, 16, 16, 3)
  np.testing.assert_allclose(small.images[0, 1, 8, 8], (cifar100.CLASSES.index(small.names[0]), 1, 7), atol=1)


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  root = _pickles(tmp_path)
  (root / "meta").write_bytes(pickle.dumps({"fine_label_names": Exploit()}))
  with pytest.raises(UnsafePickleError, match=r"meta: refusing to unpickle (posix|os|nt)\.system"):
    cifar100.load("train", root, cache_dir=tmp_path / "c")
  assert not marker.exists()
  (root / "meta").write_bytes(pickle.dumps({"fine_label_names": eval}))  # a builtin is refused too
  with pytest.raises(UnsafePickleError, match="builtins.eval"):
    cifar100.load("train", root, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("part,content,match", [
    ("meta", {"coarse_label_names": []}, "lacks the 'fine_label_names' entry"),
    ("meta", {"fine_label_names": ["a"] * 100}, "not CIFAR-100's 100 class names"),
    ("meta", {"fine_label_names": 5}, "not CIFAR-100's 100 class names"),
    ("train", {"data": np.zeros((2, 3072), np.uint8)}, "lacks the 'fine_labels' entry"),
    ("train", {"data": np.zeros((2, 3072), np.float32), "fine_labels": [0, 1]}, r"expected 'data' \(N, 3072\) uint8"),
    ("train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, "fine_labels outside 0..99"),
    ("test", [1, 2, 3], "expected a pickled dict, got list"),
])
def test_pickles_of_the_wrong_content_are_named(tmp_path, part, content, match):
  root = _pickles(tmp_path)
  (root / part).write_bytes(pickle.dumps(content))
  with pytest.raises(ValueError, match=f"{part}: .*{match}" if part == "meta" else match):
    cifar100.load("train", root, cache_dir=tmp_path / "c")


def test_damaged_or_partial_pickles_are_named(tmp_path):
  root = _pickles(tmp_path)
  (root / "test").write_bytes((root / "test").read_bytes()[:100])
  with pytest.raises(ValueError, match="test: not a readable CIFAR-100 pickle"):
    cifar100.load("train", root, cache_dir=tmp_path / "c")
  (root / "test").unlink()
  with pytest.raises(FileNotFoundError, match="pickle.*test missing"):
    cifar100.load("train", root, cache_dir=tmp_path / "c")


def test_data_folder_with_and_without_bertinetto_split_files(tmp_path):
  root = _data_folder(tmp_path / "cifar100")
  data = cifar100.load("test", tmp_path, cache_dir=tmp_path / "c")  # lists here: no split files
  assert data.images.shape == (20, 2, 32, 32, 3) and data.names.tolist() == list(CIFAR_FS_SPLITS["test"])
  np.testing.assert_array_equal(data.images[3, 1, 0, 0], (cifar100.CLASSES.index(data.names[3]), 1, 9))
  (root / "splits" / "bertinetto").mkdir(parents=True)
  (root / "splits" / "bertinetto" / "test.txt").write_text("rose\nbaby\n\n")
  assert cifar100.load("test", root, cache_dir=tmp_path / "c").names.tolist() == ["baby", "rose"]
  fc = cifar100.load("val", root, benchmark="fc100", cache_dir=tmp_path / "c")  # FC100 ignores Bertinetto's files
  assert fc.names.tolist() == list(FC100_SPLITS["val"])


def test_split_folders_must_hold_the_standard_classes(tmp_path):
  for c, name in enumerate(FC100_SPLITS["val"]):
    _png(tmp_path / "fc100" / "val" / name / "0.png", (c, 0, 0))
  data = cifar100.load("val", tmp_path, benchmark="fc100", cache_dir=tmp_path / "c")
  assert data.images.shape == (20, 1, 32, 32, 3)
  with pytest.raises(ValueError, match=r"not CIFAR-FS's val split \(unexpected: .*bear.*; missing: .*beaver"):
    cifar100.load("val", tmp_path, benchmark="cifar-fs", cache_dir=tmp_path / "c")


def test_folder_errors_are_named(tmp_path):
  root = _data_folder(tmp_path, per_class=1)
  (root / "splits" / "bertinetto").mkdir(parents=True)
  (root / "splits" / "bertinetto" / "val.txt").write_text("beaver\nunicorn\n")
  with pytest.raises(ValueError, match=r"val.txt: unknown class name\(s\) unicorn"):
    cifar100.load("val", root, cache_dir=tmp_path / "c")
  for f in (root / "data" / "whale").iterdir():
    f.unlink()
  with pytest.raises(ValueError, match="whale: class folder holds no image files"):
    cifar100.load("test", root, cache_dir=tmp_path / "c")
  (root / "data" / "whale").rmdir()
  with pytest.raises(FileNotFoundError, match=r"1 class folder\(s\) of CIFAR-FS test missing: whale"):
    cifar100.load("test", root, cache_dir=tmp_path / "c")
  (root / "data" / "rose" / "rose_0.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ImageError, match="rose_0.png"):
    cifar100.load("train", root, benchmark="fc100", cache_dir=tmp_path / "c")  # rose: flowers


def test_missing_layout_and_bad_arguments_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="found none of"):
    cifar100.load("train", tmp_path)
  with pytest.raises(ValueError, match="unknown FC100 split 'validation'"):
    cifar100.load("validation", tmp_path, benchmark="fc100")
  with pytest.raises(ValueError, match="unknown benchmark 'cifar10'"):
    cifar100.load("train", tmp_path, benchmark="cifar10")


def test_train_cifar_fs_from_pickles(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
  _pickles(tmp_path / "cifar-100-python")
  assert main(["train", "--dataset", "cifar-fs", "--data-dir", str(tmp_path), "--algo", "fomaml", "--width", "4",
               "--steps", "2", "--chunk", "2", "--meta-batch", "2", "--queries", "1", "--eval-queries", "1",
               "--eval-tasks", "4"]) == 0
  assert "eval on 4 new cifar-fs tasks (5-way 1-shot, 1 inner step(s)) after 2 meta-steps: accuracy" in \
      capsys.readouterr().out
