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
  with pytest.raises(ValueError, match="no degraded/clean pairs found in .*odd; expected subfolders"):
    benchmarks.load_paired_folder(str(tmp_path / "odd"))
  _save(tmp_path / "gap" / "rain" / "rain-1.png", _image(0))
  _save(tmp_path / "gap" / "rain" / "rain-2.png", _image(0))
  _save(tmp_path / "gap" / "norain" / "norain-1.png", _image(0))
  with pytest.raises(ValueError, match="do not pair up .*unmatched: 2"):
    benchmarks.load_paired_folder(str(tmp_path / "gap"))
  _save(tmp_path / "size" / "rain" / "rain-1.png", _image(0))
  _save(tmp_path / "size" / "norain" / "norain-1.png", _image(0, (8, 8, 3)))
  with pytest.raises(ValueError, match=r"rain-1.png is 12 x 10 \(height x width\) but its clean "
                                       r"image .*is 8 x 8; "):
    benchmarks.load_paired_folder(str(tmp_path / "size"))
  with pytest.raises(FileNotFoundError, match="paired folder .*missing does not exist"):
    benchmarks.load_paired_folder(str(tmp_path / "missing"))
  # one name in two files: it read as several rainy images per clean one (RESIDE), which let
  # a missing and an extra pair pass unsaid
  for name in ("rain-1.png", "rain-1.jpg", "rain-2.png"):
    _save(tmp_path / "twice" / "rain" / name, _image(0))
  for name in ("norain-1.png", "norain-3.png"):
    _save(tmp_path / "twice" / "norain" / name, _image(0))
  with pytest.raises(ValueError, match="holds 'rain-1' in 2 files"):
    benchmarks.load_paired_folder(str(tmp_path / "twice"))
  # two names that pair with one clean image, without RESIDE's parameters: refused, not shared
  for name in ("rain-1.png", "rainy-1.png"):
    _save(tmp_path / "both" / "rain" / name, _image(0))
  _save(tmp_path / "both" / "norain" / "norain-1.png", _image(0))
  with pytest.raises(ValueError, match=r"rain-1.png and .*rainy-1.png in .*both pair with "
                                       r".*norain-1.png; keep one"):
    benchmarks.load_paired_folder(str(tmp_path / "both"))
  for name in ("5_gt.png", "gt_5.png"):
    _save(tmp_path / "clean2" / "clean" / name, _image(0))
  _save(tmp_path / "clean2" / "input" / "5.png", _image(0))
  with pytest.raises(ValueError, match=r"5_gt.png and .*gt_5.png in .* pair by the same name"):
    benchmarks.load_paired_folder(str(tmp_path / "clean2"))


def test_names_pair_exactly_before_reside_s_parameters_are_removed(tmp_path):
  """'3_1' and '3_2' are images of their own, not two hazy versions of a clean '3', and 'box1' is
  not 'bo' with a JORDER 'x1': each degraded image pairs with the clean one of its own name
  (before, 3_1 and box1 read the clean images of 3_2 and box2)."""
  names = ("3_1", "3_2", "4_1", "box1", "box2", "blurred_7")
  for i, name in enumerate(names):
    _save(tmp_path / "set" / "input" / f"{name}.png", _image(i))
    _save(tmp_path / "set" / "target" / f"{name}.png", _image(10 + i))
  items = benchmarks.load_paired_folder(str(tmp_path / "set"))
  assert sorted(name for name, _, _ in items) == sorted(names)
  for name, degraded, clean in items:
    i = names.index(name)
    np.testing.assert_array_equal(degraded, _image(i))
    np.testing.assert_array_equal(clean, _image(10 + i))


@pytest.mark.parametrize("layout", ["sots_outdoor", "lol", "lol_v2", "gopro"])
def test_load_paired_folder_dehaze_lowlight_deblur_layouts(tmp_path, layout):
  root = tmp_path / layout
  expected = []   # (name, degraded seed, clean seed)
  for i in (1, 2, 10):
    if layout == "sots_outdoor":   # RESIDE SOTS outdoor: hazy/<id>_<A>_<beta>.jpg, gt/<id>.png
      _save(root / "hazy" / f"{i:04d}_0.8_0.2.png", _image(i))
      _save(root / "gt" / f"{i:04d}.png", _image(100 + i))
      expected.append((f"{i:04d}", i, 100 + i))
    elif layout == "lol":          # LOL: eval15/low/<n>.png, eval15/high/<n>.png
      _save(root / "low" / f"{i}.png", _image(i))
      _save(root / "high" / f"{i}.png", _image(100 + i))
      expected.append((f"{i}", i, 100 + i))
    elif layout == "lol_v2":       # LOL-v2 real: Low/low00001.png, Normal/normal00001.png
      _save(root / "Low" / f"low{i:05d}.png", _image(i))
      _save(root / "Normal" / f"normal{i:05d}.png", _image(100 + i))
      expected.append((f"normal{i:05d}", i, 100 + i))
    else:                          # GoPro: <sequence>/blur/<frame>.png, <sequence>/sharp/<frame>.png
      for seq in ("GOPR0384_11_00", "GOPR0410_11_00"):
        seed = i + (50 if seq.startswith("GOPR0410") else 0)
        _save(root / seq / "blur" / f"{i:06d}.png", _image(seed))
        _save(root / seq / "blur_gamma" / f"{i:06d}.png", _image(7))   # not read
        _save(root / seq / "sharp" / f"{i:06d}.png", _image(100 + seed))
        expected.append((f"{seq}/{i:06d}", seed, 100 + seed))
  if layout == "gopro":   # sequence, then frame (zero-padded); elsewhere numeric order 1, 2, 10
    expected.sort()
  items = benchmarks.load_paired_folder(str(root))
  assert [name for name, _, _ in items] == [name for name, _, _ in expected]
  for (_, degraded, target), (_, d, c) in zip(items, expected):
    np.testing.assert_array_equal(degraded, _image(d))
    np.testing.assert_array_equal(target, _image(c))


def test_reside_training_pairs_share_a_clean_image_and_sots_indoor_is_cropped(tmp_path):
  root = tmp_path / "OTS"
  _save(root / "clear" / "0005.png", _image(5))
  for hazy in ("0005_0.8_0.04", "0005_1_0.2"):   # several (A, beta) per clear image
    _save(root / "hazy" / f"{hazy}.png", _image(len(hazy)))
  items = benchmarks.load_paired_folder(str(root))
  assert [name for name, _, _ in items] == ["0005_0.8_0.04", "0005_1_0.2"]
  assert all((c == _image(5)).all() for _, _, c in items)
  # SOTS indoor: 1400_1.png (620 x 460 hazy) pairs with 1400.png (640 x 480), cropped 10 px a side.
  indoor = tmp_path / "indoor"
  big = _image(3, (48, 40, 3))
  _save(indoor / "gt" / "1400.png", big)
  _save(indoor / "hazy" / "1400_1.png", _image(4, (28, 20, 3)))
  (name, degraded, clean), = benchmarks.load_paired_folder(str(indoor))
  assert name == "1400" and degraded.shape == clean.shape == (28, 20, 3)
  np.testing.assert_array_equal(clean, big[10:38, 10:30])


def test_pair_keys():
  assert benchmarks.reside_key("0001_0.8_0.2") == benchmarks.pair_keys("0001")[0] == 1
  assert benchmarks.reside_key("1400_10") == 1400 and benchmarks.pair_keys("1400_10") == [
      "1400_10"]
  assert benchmarks.reside_key("rain-1") is None
  assert benchmarks.pair_keys("low00690") == benchmarks.pair_keys("normal00690") == [690]
  assert benchmarks.pair_keys("norain-001x2") == ["001x2", 1]
  assert benchmarks.pair_keys("norain-001") == benchmarks.pair_keys("blurred_001") == [1]
  assert benchmarks.pair_keys("rain-12") == benchmarks.pair_keys("12_gt") == [12]
  assert benchmarks.pair_keys("city_rainy") == benchmarks.pair_keys("city_clean") == ["city"]
  assert [benchmarks.pair_keys(n)[0] for n in ("box1", "yellow", "rainbow_2")] == [
      "box1", "yellow", "rainbow_2"]


def test_photos_testset(tmp_path):
  items = benchmarks.photos_testset(ml_collections.ConfigDict({"tfds_dir": str(tmp_path)}))
  assert [name for name, _ in items] == ["chelsea", "coffee", "rocket"]
  assert [image.shape for _, image in items] == [(300, 451, 3), (400, 600, 3), (427, 640, 3)]
  assert all(image.dtype == np.uint8 for _, image in items)


def test_load_hr_folder_reads_the_hr_subfolder_of_the_official_ipt_layout(tmp_path):
  # benchmark/Set5/{HR,LR_bicubic/X2}: what launch/ipt_published.py accepts, and what
  # experiments/ipt_paper.py's eval sets (benchmark/Set5) must read too.
  _save(tmp_path / "Set5" / "HR" / "baby.png", _image(0))
  _save(tmp_path / "Set5" / "LR_bicubic" / "X2" / "babyx2.png", _image(1, (6, 5, 3)))
  items = benchmarks.load_hr_folder(str(tmp_path / "Set5"))
  assert [name for name, _ in items] == ["baby"]
  np.testing.assert_array_equal(items[0][1], _image(0))
