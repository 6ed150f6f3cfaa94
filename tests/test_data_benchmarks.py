"""Test-set loaders: clean HR folders, rainy / clean pair layouts, the photos' test split."""
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mtl.data import benchmarks


def _save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _image(seed, shape=(12, 10, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_load_hr_folder_is_sorted_flat_and_exact(tmp_path):
  for i, name in enumerate(["woman", "baby", "bird"]):
    _save(tmp_path / "Set5" / f"{name}.png", _image(i))
  _save(tmp_path / "Set5" / "LRbicx2" / "baby.png", _image(9, (6, 5, 3)))   # not read
  items = benchmarks.load_hr_folder(str(tmp_path / "Set5"))
  assert [name for name, _ in items] == ["baby", "bird", "woman"]
  np.testing.assert_array_equal(items[0][1], _image(1))


def test_load_hr_folder_keeps_hr_of_selfexsr_layout_and_explains_subfolders(tmp_path):
  _save(tmp_path / "x2" / "img_001_SRF_2_HR.png", _image(0))
  _save(tmp_path / "x2" / "img_001_SRF_2_LR.png", _image(1, (6, 5, 3)))
  assert [n for n, _ in benchmarks.load_hr_folder(str(tmp_path / "x2"))] == ["img_001_SRF_2_HR"]
  _save(tmp_path / "Set14" / "GTmod12" / "a.png", _image(0))
  with pytest.raises(ValueError, match="no images directly in .*Set14; its subfolders: GTmod12"):
    benchmarks.load_hr_folder(str(tmp_path / "Set14"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    benchmarks.load_hr_folder(str(tmp_path / "nope"))


def test_mod_crop():
  image = np.zeros((13, 10, 3), np.uint8)
  assert benchmarks.mod_crop(image, 3).shape == (12, 9, 3)
  assert benchmarks.mod_crop(image, 2).shape == (12, 10, 3)
  assert benchmarks.mod_crop(image, 1).shape == (13, 10, 3)


@pytest.mark.parametrize("layout", ["subfolders", "jorder", "prenet", "flat", "restormer"])
def test_load_paired_folder_layouts(tmp_path, layout):
  root = tmp_path / "Rain100L"
  for i in (1, 2, 10):
    rainy, clean = _image(i), _image(100 + i)
    if layout == "subfolders":
      _save(root / "rain" / f"rain-{i:03d}.png", rainy)
      _save(root / "norain" / f"norain-{i:03d}.png", clean)
    elif layout == "jorder":
      _save(root / "rain" / "X2" / f"norain-{i}x2.png", rainy)
      _save(root / "norain" / f"norain-{i}.png", clean)
    elif layout == "prenet":
      _save(root / "rainy" / f"rain-{i:03d}.png", rainy)
      _save(root / f"norain-{i:03d}.png", clean)
    elif layout == "flat":
      _save(root / f"rain-{i:03d}.png", rainy)
      _save(root / f"norain-{i:03d}.png", clean)
      _save(root / f"rainstreak-{i:03d}.png", _image(7))   # RainTrainL extras are ignored
    else:
      _save(root / "input" / f"{i}.png", rainy)
      _save(root / "target" / f"{i}.png", clean)
  items = benchmarks.load_paired_folder(str(root))
  assert len(items) == 3
  for (name, degraded, target), i in zip(items, (1, 2, 10)):
    assert str(i) in name
    np.testing.assert_array_equal(degraded, _image(i))
    np.testing.assert_array_equal(target, _image(100 + i))


def test_load_paired_folder_errors(tmp_path):
  _save(tmp_path / "odd" / "a.png", _image(0))
  with pytest.raises(ValueError, match="no rainy/clean pairs found in .*odd; expected subfolders"):
    benchmarks.load_paired_folder(str(tmp_path / "odd"))
  _save(tmp_path / "gap" / "rain" / "rain-1.png", _image(0))
  _save(tmp_path / "gap" / "rain" / "rain-2.png", _image(0))
  _save(tmp_path / "gap" / "norain" / "norain-1.png", _image(0))
  with pytest.raises(ValueError, match="do not pair up .*unmatched: 2"):
    benchmarks.load_paired_folder(str(tmp_path / "gap"))
  _save(tmp_path / "size" / "rain" / "rain-1.png", _image(0))
  _save(tmp_path / "size" / "norain" / "norain-1.png", _image(0, (8, 8, 3)))
  with pytest.raises(ValueError, match="rain-1.png is \\(12, 10\\) but its clean image"):
    benchmarks.load_paired_folder(str(tmp_path / "size"))
  with pytest.raises(FileNotFoundError, match="paired test folder .*missing does not exist"):
    benchmarks.load_paired_folder(str(tmp_path / "missing"))


def test_pair_key():
  assert benchmarks.pair_key("norain-001x2") == benchmarks.pair_key("norain-001") == 1
  assert benchmarks.pair_key("rain-12") == benchmarks.pair_key("12_gt") == 12
  assert benchmarks.pair_key("city_rainy") == benchmarks.pair_key("city_clean") == "city"


def test_photos_testset(tmp_path):
  items = benchmarks.photos_testset(ml_collections.ConfigDict({"tfds_dir": str(tmp_path)}))
  assert [name for name, _ in items] == ["chelsea", "coffee", "rocket"]
  assert [image.shape for _, image in items] == [(300, 451, 3), (400, 600, 3), (427, 640, 3)]
  assert all(image.dtype == np.uint8 for _, image in items)
