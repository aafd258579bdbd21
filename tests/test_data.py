"""Data: the Omniglot loader on the shared zips and on synthetic trees; the episode sampler."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from metajax.data import episodes, omniglot
from metajax.data import images as imgs
from metajax.data.images import ImageError

SHARED = Path(os.environ.get("METAJAX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "omniglot").is_dir(),
                                  reason=f"shared Omniglot data not found at {SHARED} (set METAJAX_DATA)")


def _png(path: Path, size=(105, 105), mode="L", value=255):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value).save(path)


def _tree(root: Path, alphabets=2, chars=3, drawers=4) -> Path:
  for a in range(alphabets):
    for c in range(chars):
      for d in range(drawers):
        _png(root / f"Alpha{a}" / f"character{c + 1:02d}" / f"{a}{c}_{d + 1:02d}.png", value=10 * d)
  return root


@needs_shared
def test_small_zip_counts_match_the_data_readme(tmp_path):
  data = omniglot.load("background_small1", SHARED, rotations=False, cache_dir=tmp_path)
  assert data.images.shape == (136, 20, 28, 28) and data.images.dtype == np.uint8
  alphabets = {n.split("/")[0] for n in data.names}
  assert alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
  assert sum(n.startswith("Korean/") for n in data.names) == 40
  # ink is dark on a white background, about 8% of pixels at full size
  assert 0.02 < float((data.images < 128).mean()) < 0.2
  rotated = omniglot.load("background_small1", SHARED, cache_dir=tmp_path)
  assert rotated.images.shape == (4 * 136, 20, 28, 28)
  np.testing.assert_array_equal(rotated.images[136], np.rot90(data.images[0], axes=(-2, -1)))


@needs_shared
@pytest.mark.slow
def test_full_zips_and_vinyals_split_counts(tmp_path):
  bg = omniglot.load("background", SHARED, rotations=False, cache_dir=tmp_path)
  ev = omniglot.load("evaluation", SHARED, rotations=False, cache_dir=tmp_path)
  assert bg.images.shape[:2] == (964, 20) and ev.images.shape[:2] == (659, 20)
  assert len({n.split("/")[0] for n in bg.names}) == 30 and len({n.split("/")[0] for n in ev.names}) == 20
  for split, classes in (("trainval", 4800), ("test", 1692), ("train", 4112), ("val", 688)):
    assert omniglot.load(split, SHARED, cache_dir=tmp_path).images.shape == (classes, 20, 28, 28)


@needs_shared
def test_second_load_comes_from_the_cache(tmp_path):
  omniglot.load("background_small2", SHARED, rotations=False, cache_dir=tmp_path)
  cached = list(tmp_path.glob("omniglot-*.npz"))
  assert len(cached) == 1
  stamp = cached[0].stat().st_mtime_ns
  again = omniglot.load("background_small2", SHARED, rotations=False, cache_dir=tmp_path)
  assert again.images.shape == (156, 20, 28, 28) and cached[0].stat().st_mtime_ns == stamp


def test_folder_and_zip_give_the_same_arrays(tmp_path):
  root = _tree(tmp_path / "images_background")
  zpath = tmp_path / "zipped" / "images_background.zip"
  zpath.parent.mkdir()
  with zipfile.ZipFile(zpath, "w") as z:
    for f in sorted(root.rglob("*.png")):
      z.write(f, f"images_background/{f.relative_to(root)}")
  a = omniglot.load("background", tmp_path, rotations=False, cache_dir=tmp_path / "c1")
  b = omniglot.load("background", tmp_path / "zipped", rotations=False, cache_dir=tmp_path / "c2")
  np.testing.assert_array_equal(a.images, b.images)
  assert a.names.tolist() == b.names.tolist() == [f"Alpha{i}/character0{j}/rot000" for i in range(2) for j in (1, 2, 3)]


def test_missing_data_directory_is_named(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    omniglot.load("background", tmp_path / "nope")
  monkeypatch.delenv("METAJAX_DATA", raising=False)
  with pytest.raises(FileNotFoundError, match="METAJAX_DATA"):
    omniglot.load("background")
  with pytest.raises(FileNotFoundError, match="images_background"):
    omniglot.load("background", tmp_path)


def test_unknown_split_is_named(tmp_path):
  with pytest.raises(ValueError, match="unknown Omniglot split"):
    omniglot.load("training", tmp_path)


def test_empty_character_folder_is_named(tmp_path):
  root = _tree(tmp_path / "images_background")
  (root / "Alpha0" / "character09").mkdir()
  with pytest.raises(ValueError, match="character09.*no image files"):
    omniglot.load("background", tmp_path, cache_dir=tmp_path / "c")


def test_corrupt_png_is_named(tmp_path):
  root = _tree(tmp_path / "images_background")
  bad = root / "Alpha1" / "character02" / "11_02.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  with pytest.raises(ImageError, match="11_02.png"):
    omniglot.load("background", tmp_path, cache_dir=tmp_path / "c")


def test_non_image_files_are_skipped(tmp_path):
  root = _tree(tmp_path / "images_background")
  (root / "Alpha0" / "character01" / "notes.txt").write_text("hello")
  (root / "Alpha0" / ".DS_Store").write_bytes(b"\0\0")
  data = omniglot.load("background", tmp_path, rotations=False, cache_dir=tmp_path / "c")
  assert data.images.shape == (6, 4, 28, 28)


def test_rgb_and_odd_sized_images_are_converted_and_resized(tmp_path):
  root = _tree(tmp_path / "images_background")
  _png(root / "Alpha0" / "character01" / "00_01.png", size=(64, 80), mode="RGB", value=(200, 100, 50))
  data = omniglot.load("background", tmp_path, rotations=False, cache_dir=tmp_path / "c")
  assert data.images.shape == (6, 4, 28, 28)
  expected = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))
  assert abs(int(data.images[0, 0, 14, 14]) - expected) <= 1


def _drawing(seed: int = 0) -> Image.Image:
  """A 105×105 1-bit image (mode "1", as Omniglot's PNGs) of random 3-pixel strokes on white."""
  ink = np.ones((105, 105), bool)
  rng = np.random.default_rng(seed)
  for r, c in rng.integers(0, 102, (40, 2)):
    ink[r:r + 3, c:c + 30] = False
  return Image.fromarray(ink)


def test_nearest_resample_keeps_a_drawing_black_and_white_as_pillow_resizes_it(tmp_path):
  drawing = _drawing()
  assert drawing.mode == "1"
  nearest, lanczos = (imgs.fit(drawing, (28, 28), "L", r) for r in ("nearest", "lanczos"))
  # Pillow resizes a 1-bit image with nearest neighbours whatever filter is asked for (what the
  # papers' codes fed their networks); "lanczos" converts to grey first and averages.
  pillow = np.asarray(drawing.resize((28, 28), Image.Resampling.LANCZOS).convert("L"))
  np.testing.assert_array_equal(nearest, pillow)
  assert set(np.unique(nearest)) == {0, 255}
  assert len(np.unique(lanczos)) > 10
  with pytest.raises(ValueError, match="unknown resample 'bilinear'"):
    imgs.fit(drawing, (28, 28), "L", "bilinear")
  with pytest.raises(ValueError, match="^unknown resample 'box'"):  # not "x.png: not a readable image"
    imgs.decode(b"", "x.png", (28, 28), "L", "box")


def test_omniglot_resample_is_part_of_the_cache_key(tmp_path):
  for a, c, d in np.ndindex(1, 2, 3):
    path = tmp_path / "images_background" / f"Alpha{a}" / f"character{c + 1:02d}" / f"{c}_{d + 1:02d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    _drawing(10 * c + d).save(path)
  load = lambda resample: omniglot.load("background", tmp_path, rotations=False, resample=resample,
                                        cache_dir=tmp_path / "c").images
  lanczos, nearest, again = load("lanczos"), load("nearest"), load("lanczos")
  assert len(list((tmp_path / "c").glob("omniglot-*.npz"))) == 2
  assert set(np.unique(nearest)) == {0, 255} and not np.array_equal(lanczos, nearest)
  np.testing.assert_array_equal(again, lanczos)
  with pytest.raises(ValueError, match="unknown resample"):
    load("box")


def test_omniglot_invert_turns_strokes_light_on_dark_from_the_same_cache(tmp_path):
  for c, d in np.ndindex(2, 3):
    path = tmp_path / "images_background" / "Alpha0" / f"character{c + 1:02d}" / f"{c}_{d + 1:02d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    _drawing(10 * c + d).save(path)
  load = lambda invert: omniglot.load("background", tmp_path, invert=invert, cache_dir=tmp_path / "c")
  plain, inverted = load(False), load(True)
  assert len(list((tmp_path / "c").glob("omniglot-*.npz"))) == 1  # inverted after the cache, not a second one
  np.testing.assert_array_equal(inverted.images, 255 - plain.images)
  np.testing.assert_array_equal(inverted.names, plain.names)
  assert plain.images.dtype == inverted.images.dtype == np.uint8 and plain.images.shape == (8, 3, 28, 28)
  with pytest.raises(ValueError, match="invert must be True or False, got 'false'"):  # not read as true
    load("false")


def test_unequal_drawer_counts_are_named(tmp_path):
  root = _tree(tmp_path / "images_background")
  (root / "Alpha1" / "character03" / "12_04.png").unlink()
  with pytest.raises(ValueError, match="different numbers of drawings .*Alpha1/character03 has 3 where the others "
                     "have 4"):
    omniglot.load("background", tmp_path, cache_dir=tmp_path / "c")


def test_a_stray_image_file_in_a_character_folder_is_named(tmp_path):
  root = _tree(tmp_path / "images_background")
  _png(root / "Alpha0" / "character02" / "broken.png", value=0)
  with pytest.raises(ValueError, match="Alpha0/character02 has 5 where the others have 4; "
                     "files not named 01_<drawer>: broken.png"):
    omniglot.load("background", tmp_path, cache_dir=tmp_path / "c")


def test_not_a_zip_is_named(tmp_path):
  (tmp_path / "images_background.zip").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="not a readable zip"):
    omniglot.load("background", tmp_path, cache_dir=tmp_path / "c")


def _fake_classes(classes=12, examples=7, hw=5):
  # every pixel of image (c, e) holds the value 10*c + e, so samples can be traced back
  values = (10 * np.arange(classes)[:, None] + np.arange(examples)[None]).astype(np.uint8)
  return jnp.asarray(np.broadcast_to(values[:, :, None, None], (classes, examples, hw, hw)).copy())


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 3), (3, 2, 5), (12, 1, 0), (2, 4, 3)])
def test_episode_shapes_balance_and_disjointness(ways, shots, queries):
  images = _fake_classes()
  tasks = jax.jit(lambda k: episodes.sample(k, images, num_tasks=6, ways=ways, shots=shots,
                                            queries=queries))(jax.random.PRNGKey(0))
  assert tasks.x_support.shape == (6, ways * shots, 5, 5, 1)
  assert tasks.x_query.shape == (6, ways * queries, 5, 5, 1)
  assert tasks.y_support.dtype == jnp.int32
  for t in range(6):
    ids_s = np.rint(np.asarray(tasks.x_support[t, :, 0, 0, 0]) * 255).astype(int)
    ids_q = np.rint(np.asarray(tasks.x_query[t, :, 0, 0, 0]) * 255).astype(int)
    ys, yq = np.asarray(tasks.y_support[t]), np.asarray(tasks.y_query[t])
    assert np.bincount(ys, minlength=ways).tolist() == [shots] * ways
    assert np.bincount(yq, minlength=ways).tolist() == ([queries] * ways if queries else [0] * ways)
    label_class = {}
    for ident, label in list(zip(ids_s, ys)) + list(zip(ids_q, yq)):
      assert label_class.setdefault(label, ident // 10) == ident // 10  # one class per label
    assert len(set(label_class.values())) == ways  # distinct classes
    assert not set(ids_s) & set(ids_q)  # disjoint support / query
    assert len(set(ids_s)) == len(ids_s)


def test_episodes_are_deterministic_and_labels_permuted():
  images = _fake_classes()
  draw = lambda seed: episodes.sample(jax.random.PRNGKey(seed), images, num_tasks=20, ways=5, shots=1, queries=1)
  a, b = draw(0), draw(0)
  np.testing.assert_array_equal(a.x_support, b.x_support)
  assert not np.array_equal(a.x_support, draw(1).x_support)
  first_class = np.rint(np.asarray(a.x_support[:, 0, 0, 0, 0]) * 255).astype(int) // 10
  assert len(set(first_class.tolist())) > 3  # label 0 is not always the same class


@pytest.mark.parametrize("kw,match", [
    (dict(ways=13, shots=1, queries=1), "ways=13 exceeds the 12 classes"),
    (dict(ways=5, shots=4, queries=4), "exceeds the 7 examples"),
    (dict(ways=5, shots=-1, queries=1), "shots must be a positive"),
    (dict(ways=0, shots=1, queries=1), "ways must be a positive"),
    (dict(ways=5, shots=1, queries=-2), "queries must be"),
])
def test_impossible_episodes_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    episodes.sample(jax.random.PRNGKey(0), _fake_classes(), num_tasks=2, **kw)


def test_grouped_episodes_draw_every_task_from_one_group():
  images = _fake_classes()
  groups = jnp.asarray([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])  # group 0 is too small for 4 ways
  tasks = jax.jit(lambda k: episodes.sample(k, images, num_tasks=40, ways=4, shots=1, queries=1,
                                            groups=groups))(jax.random.PRNGKey(0))
  seen = set()
  for t in range(40):
    classes = np.rint(np.asarray(tasks.x_support[t, :, 0, 0, 0]) * 255).astype(int) // 10
    assert len(set(classes)) == 4
    assert len({int(groups[c]) for c in classes}) == 1
    seen.add(int(groups[classes[0]]))
  assert seen == {1, 2}


@pytest.mark.parametrize("groups,match", [
    (np.zeros(11, int), r"groups must be \(12,\) integers"),
    (np.zeros(12, float), r"groups must be \(12,\) integers"),
    (np.arange(12) % 4, "no group has ways=5 classes"),
])
def test_bad_groups_are_named(groups, match):
  with pytest.raises(ValueError, match=match):
    episodes.sample(jax.random.PRNGKey(0), _fake_classes(), num_tasks=2, ways=5, shots=1, queries=1,
                    groups=jnp.asarray(groups))
